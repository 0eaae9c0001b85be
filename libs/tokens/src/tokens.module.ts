import { Module } from '@nestjs/common';
import { CellsModule } from '@keyhole/cells';
import { randomTokenGenerator, TOKEN_GENERATOR } from './token-generator';
import { TokensService } from './tokens.service';
import { SessionsService } from './sessions.service';

/** The token lifecycle. Needs `ConfigModule`, `CoreModule` and `DbModule.forControl`. */
@Module({
  imports: [CellsModule],
  providers: [TokensService, SessionsService, { provide: TOKEN_GENERATOR, useValue: randomTokenGenerator }],
  exports: [TokensService, SessionsService],
})
export class TokensModule {}
