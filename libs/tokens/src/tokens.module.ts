import { Module } from '@nestjs/common';
import { CellsModule } from '@keyhole/cells';
import { randomTokenGenerator, TOKEN_GENERATOR } from './token-generator';
import { TokensService } from './tokens.service';
import { SessionsService } from './sessions.service';
import { PurgeService } from './purge.service';

/** The token lifecycle. Needs `ConfigModule`, `CoreModule`, `MetricsModule` and `DbModule.forControl`. */
@Module({
  imports: [CellsModule],
  providers: [TokensService, SessionsService, PurgeService, { provide: TOKEN_GENERATOR, useValue: randomTokenGenerator }],
  exports: [TokensService, SessionsService, PurgeService],
})
export class TokensModule {}
