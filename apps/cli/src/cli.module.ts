import { DynamicModule, Module } from '@nestjs/common';
import { CellsModule } from '@keyhole/cells';
import { ConfigModule, KeyholeConfig } from '@keyhole/config';
import { CoreModule } from '@keyhole/core';
import { MetricsModule } from '@keyhole/observability';
import { CredentialsModule } from '@keyhole/credentials';
import { DbModule } from '@keyhole/db';
import { TokensModule } from '@keyhole/tokens';

/** The services the operator commands use, without any HTTP server. */
@Module({})
export class CliModule {
  static forRoot(config: KeyholeConfig): DynamicModule {
    return {
      module: CliModule,
      imports: [
        ConfigModule.forRoot(config),
        CoreModule,
        MetricsModule,
        DbModule.forControl('keyhole-cli'),
        CellsModule,
        TokensModule,
        CredentialsModule,
      ],
    };
  }
}
