import { Inject, Injectable, Logger } from '@nestjs/common';
import { CellDatabases, CellsService } from '@keyhole/cells';
import { KEYHOLE_CONFIG, KeyholeConfig } from '@keyhole/config';
import { CLOCK, Clock, isConsoleType, KeyholeError, nowSeconds, sha256Hex } from '@keyhole/core';
import { LEGACY_TOKEN_STORE, LegacyTokenStore, NO_INSTANCE_UUID, WEBSOCKIFY_CONSOLE_TYPE } from '@keyhole/legacy-store';
import { CURRENT_OBJECT_VERSION } from './console-auth-token.object';

export interface LegacyImportResult {
  cell: string;
  /** Live legacy tokens read. */
  seen: number;
  /** Rows written (hashed) to the cell database. */
  imported: number;
  /** Already in the cell database (an earlier import, or a dual-written token). */
  alreadyPresent: number;
  /** Legacy tokens of a console type keyhole does not serve. */
  skipped: number;
}

/**
 * Moves every live legacy token into a cell database, hashed, with the same expiry, so the fallback
 * can be switched off without invalidating a single console URL. Idempotent: run it again to catch
 * tokens issued meanwhile.
 */
@Injectable()
export class LegacyImportService {
  private readonly logger = new Logger(LegacyImportService.name);

  constructor(
    @Inject(KEYHOLE_CONFIG) private readonly config: KeyholeConfig,
    @Inject(CLOCK) private readonly clock: Clock,
    @Inject(LEGACY_TOKEN_STORE) private readonly legacy: LegacyTokenStore | null,
    private readonly cells: CellsService,
    private readonly databases: CellDatabases,
  ) {}

  async importInto(cellName: string): Promise<LegacyImportResult> {
    if (!this.legacy) {
      throw new KeyholeError('INVALID_INPUT', 'No legacy store is configured (KEYHOLE_LEGACY_REDIS_URL)');
    }
    const cell = await this.cells.get(cellName);
    const database = await this.databases.get(cellName);
    const result: LegacyImportResult = { cell: cellName, seen: 0, imported: 0, alreadyPresent: 0, skipped: 0 };
    for await (const { token, authorization, ttlSeconds } of this.legacy.scan()) {
      result.seen += 1;
      const consoleType = authorization.consoleType ?? WEBSOCKIFY_CONSOLE_TYPE;
      if (!isConsoleType(consoleType)) {
        result.skipped += 1;
        continue;
      }
      // A key without TTL gets the default lifetime: keyhole tokens always expire.
      const expires = nowSeconds(this.clock) + (ttlSeconds ?? this.config.tokens.defaultTtlSeconds);
      const inserted = await database.tokens.insertIfAbsent({
        tokenHash: sha256Hex(token),
        consoleType,
        host: authorization.host,
        port: authorization.port,
        tlsPort: null,
        internalAccessPath: authorization.internalAccessPath,
        instanceUuid: authorization.instanceUuid ?? NO_INSTANCE_UUID,
        expires,
        accessUrlBase: authorization.accessUrlBase ?? cell.accessUrlBases[consoleType],
        objectVersion: CURRENT_OBJECT_VERSION,
        issuedBy: null,
      });
      if (inserted) {
        result.imported += 1;
      } else {
        result.alreadyPresent += 1;
      }
    }
    this.logger.log({ ...result }, 'legacy tokens imported');
    return result;
  }
}
