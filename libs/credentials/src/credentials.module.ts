import { Module } from '@nestjs/common';
import { CellsModule } from '@keyhole/cells';
import { CredentialsService } from './credentials.service';
import { SecretHasher } from './secret-hasher';

/** API credentials. Needs `ConfigModule`, `CoreModule` and `DbModule.forControl`. */
@Module({
  imports: [CellsModule],
  providers: [CredentialsService, SecretHasher],
  exports: [CredentialsService],
})
export class CredentialsModule {}
