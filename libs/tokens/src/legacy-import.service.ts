import { Inject, Injectable, Logger } from '@nestjs/common';
import { CellDatabases, CellsService } from '@keyhole/cells';
import { KEYHOLE_CONFIG, KeyholeConfig } from '@keyhole/config';
import { CLOCK, Clock, isConsoleType, KeyholeError, nowSeconds, sha256Hex } from '@keyhole/core';
import { LEGACY_TOKEN_STORE, LegacySkipReason, LegacyTokenStore, NO_INSTANCE_UUID, WEBSOCKIFY_CONSOLE_TYPE } from '@keyhole/legacy-store';
import { CURRENT_OBJECT_VERSION } from './console-auth-token.object';

/** Why an entry was not imported: the store's reasons (expired, malformed, not a token) or an unserved console type. */
export type LegacyImportSkipReason = LegacySkipReason | 'unserved-type';

export interface LegacyImportResult {
  cell: string;
  /** Legacy entries read: live tokens and skipped entries (Nova's per-instance lists are not entries). */
  seen: number;
  /** Rows written (hashed) to the cell database. */
  imported: number;
  /** Already in the cell database (an earlier import, or a dual-written token). */
  alreadyPresent: number;
  /** Entries not imported, by reason. Any at all means some legacy console URL will not survive the fallback. */
  skipped: Record<LegacyImportSkipReason, number>;
}

/** Entries the import skipped, all reasons together. */
export function skippedCount(result: LegacyImportResult): number {
  return Object.values(result.skipped).reduce((sum, count) => sum + count, 0);
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
    const result: LegacyImportResult = {
      cell: cellName,
      seen: 0,
      imported: 0,
      alreadyPresent: 0,
      skipped: { expired: 0, malformed: 0, 'not-a-token': 0, 'unserved-type': 0 },
    };
    for await (const entry of this.legacy.scan()) {
      result.seen += 1;
      if (entry.kind === 'skipped') {
        result.skipped[entry.reason] += 1;
        continue;
      }
      const { token, authorization, ttlSeconds } = entry;
      const consoleType = authorization.consoleType ?? WEBSOCKIFY_CONSOLE_TYPE;
      if (!isConsoleType(consoleType)) {
        result.skipped['unserved-type'] += 1;
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
    this.logger.log({ ...result, skipped: { ...result.skipped } }, 'legacy tokens imported');
    return result;
  }
}
