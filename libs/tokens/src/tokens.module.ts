import { Module } from '@nestjs/common';
import { CellsModule } from '@keyhole/cells';
import { LegacyStoreModule } from '@keyhole/legacy-store';
import { randomTokenGenerator, TOKEN_GENERATOR } from './token-generator';
import { TokensService } from './tokens.service';
import { SessionsService } from './sessions.service';
import { PurgeService } from './purge.service';
import { SessionReaperService } from './session-reaper.service';
import { FallbackService } from './fallback.service';
import { LegacyImportService } from './legacy-import.service';

/** The token lifecycle. Needs `ConfigModule`, `CoreModule`, `MetricsModule` and `DbModule.forControl`. */
@Module({
  imports: [CellsModule, LegacyStoreModule],
  providers: [
    TokensService,
    SessionsService,
    PurgeService,
    SessionReaperService,
    FallbackService,
    LegacyImportService,
    { provide: TOKEN_GENERATOR, useValue: randomTokenGenerator },
  ],
  exports: [TokensService, SessionsService, PurgeService, SessionReaperService, FallbackService, LegacyImportService],
})
export class TokensModule {}
