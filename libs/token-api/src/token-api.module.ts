import { DynamicModule, Module } from '@nestjs/common';
import { ScheduleModule } from '@nestjs/schedule';
import { APP_FILTER, APP_GUARD } from '@nestjs/core';
import { CellsModule } from '@keyhole/cells';
import { ConfigModule, KeyholeConfig } from '@keyhole/config';
import { CoreModule } from '@keyhole/core';
import { MetricsModule } from '@keyhole/observability';
import { CredentialsModule } from '@keyhole/credentials';
import { DbModule } from '@keyhole/db';
import { TokensModule } from '@keyhole/tokens';
import { UpstreamModule } from '@keyhole/upstream';
import { ApiExceptionFilter } from './http/api-exception.filter';
import { CellMaintenanceTask } from './cell-maintenance.task';
import { AuthGuard } from './http/auth.guard';
import { TlsCertificatesHook } from './http/tls-certificates.hook';
import { CellsController } from './v1/cells.controller';
import { CredentialsController } from './v1/credentials.controller';
import { HealthController } from './v1/health.controller';
import { OpenApiController } from './v1/openapi.controller';
import { TokensController } from './v1/tokens.controller';
import { SessionsController } from './v1/sessions.controller';
import { FallbackController } from './v1/fallback.controller';

/** The token API: wiring only; the rules live in the libs. */
@Module({})
export class TokenApiModule {
  static forRoot(config: KeyholeConfig): DynamicModule {
    return {
      module: TokenApiModule,
      imports: [
        ConfigModule.forRoot(config),
        CoreModule,
        MetricsModule,
        ScheduleModule.forRoot(),
        DbModule.forControl('keyhole-api'),
        CellsModule,
        TokensModule,
        CredentialsModule,
        UpstreamModule,
      ],
      controllers: [
        TokensController,
        SessionsController,
        FallbackController,
        CellsController,
        CredentialsController,
        HealthController,
        OpenApiController,
      ],
      providers: [
        CellMaintenanceTask,
        TlsCertificatesHook,
        { provide: APP_GUARD, useClass: AuthGuard },
        { provide: APP_FILTER, useClass: ApiExceptionFilter },
      ],
    };
  }
}
