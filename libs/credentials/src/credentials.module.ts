import { Module } from '@nestjs/common';
import { CellsModule } from '@keyhole/cells';
import { AuthenticationThrottle } from './authentication-throttle';
import { CredentialsService } from './credentials.service';
import { SecretHasher } from './secret-hasher';

/** API credentials. Needs `ConfigModule`, `CoreModule`, `MetricsModule` and `DbModule.forControl`. */
@Module({
  imports: [CellsModule],
  providers: [CredentialsService, SecretHasher, AuthenticationThrottle],
  exports: [CredentialsService],
})
export class CredentialsModule {}
