import { Module } from '@nestjs/common';
import { CellsModule } from '@keyhole/cells';
import { randomTokenGenerator, TOKEN_GENERATOR } from './token-generator';
import { TokensService } from './tokens.service';
import { SessionsService } from './sessions.service';
import { PurgeService } from './purge.service';
import { FallbackService } from './fallback.service';

/** The token lifecycle. Needs `ConfigModule`, `CoreModule`, `MetricsModule` and `DbModule.forControl`. */
@Module({
  imports: [CellsModule],
  providers: [TokensService, SessionsService, PurgeService, FallbackService, { provide: TOKEN_GENERATOR, useValue: randomTokenGenerator }],
  exports: [TokensService, SessionsService, PurgeService, FallbackService],
})
export class TokensModule {}
