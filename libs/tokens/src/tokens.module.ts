import { Module } from '@nestjs/common';
import { CellsModule } from '@keyhole/cells';
import { randomTokenGenerator, TOKEN_GENERATOR } from './token-generator';
import { TokensService } from './tokens.service';

/** The token lifecycle. Needs `ConfigModule`, `CoreModule` and `DbModule.forControl`. */
@Module({
  imports: [CellsModule],
  providers: [TokensService, { provide: TOKEN_GENERATOR, useValue: randomTokenGenerator }],
  exports: [TokensService],
})
export class TokensModule {}
