import { Module } from '@nestjs/common';
import { CellsModule } from '@keyhole/cells';
import { CredentialsService } from './credentials.service';

/** API credentials. Needs `ConfigModule`, `CoreModule` and `DbModule.forControl`. */
@Module({
  imports: [CellsModule],
  providers: [CredentialsService],
  exports: [CredentialsService],
})
export class CredentialsModule {}
