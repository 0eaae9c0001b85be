import { Inject, Injectable, Logger } from '@nestjs/common';
import { CellDatabases } from '@keyhole/cells';
import { CellsService } from '@keyhole/cells';
import { KEYHOLE_CONFIG, KeyholeConfig } from '@keyhole/config';
import { CLOCK, Clock, ConsoleType, KeyholeError, fingerprintOfHash, isPlausibleToken, nowSeconds, sha256Hex } from '@keyhole/core';
import { ConsoleAuthTokenRepository, postgresErrorCode, UNIQUE_VIOLATION } from '@keyhole/db';
import { LEGACY_TOKEN_STORE, LegacyTokenStore } from '@keyhole/legacy-store';
import { ConsoleAuthToken, CURRENT_OBJECT_VERSION } from './console-auth-token.object';
import { invalidToken, tokenIdNotFound, tokenInUse } from './tokens.errors';
import { TOKEN_GENERATOR, TokenGenerator } from './token-generator';

export interface AuthorizeInput {
  instanceUuid: string;
  consoleType: ConsoleType;
  /** Where the console listens (the hypervisor's address), not the compute service name. */
  host: string;
  port: number;
  tlsPort?: number | null;
  internalAccessPath?: string | null;
  /** Lifetime; the configured default when absent. */
  ttlSeconds?: number;
  /** Public id of the API credential asking. */
  issuedBy: string | null;
}

export interface ListTokensInput {
  instanceUuid?: string;
  afterId?: number;
  limit: number;
}

/** The ConsoleAuthToken lifecycle in a cell database: authorize, validate, revoke, purge. */
@Injectable()
export class TokensService {
  private readonly logger = new Logger(TokensService.name);

  constructor(
    @Inject(KEYHOLE_CONFIG) private readonly config: KeyholeConfig,
    @Inject(CLOCK) private readonly clock: Clock,
    @Inject(TOKEN_GENERATOR) private readonly generateToken: TokenGenerator,
    private readonly cells: CellsService,
    private readonly databases: CellDatabases,
    @Inject(LEGACY_TOKEN_STORE) private readonly legacy: LegacyTokenStore | null,
  ) {}

  /**
   * Creates a token for an instance console and returns it with its plaintext, once. Only
   * sha256(token) is stored; the row is committed before this returns.
   */
  async authorize(cellName: string, input: AuthorizeInput): Promise<ConsoleAuthToken> {
    const ttlSeconds = input.ttlSeconds ?? this.config.tokens.defaultTtlSeconds;
    if (ttlSeconds > this.config.tokens.maxTtlSeconds) {
      throw new KeyholeError('INVALID_INPUT', `ttlSeconds must not exceed ${this.config.tokens.maxTtlSeconds}`, {
        details: { in: 'body', fields: [{ field: 'ttlSeconds', message: `at most ${this.config.tokens.maxTtlSeconds}` }] },
      });
    }
    const accessUrlBase = await this.cells.accessUrlBase(cellName, input.consoleType);
    const database = await this.databases.get(cellName);
    const token = this.generateToken();
    const tokenHash = sha256Hex(token);
    try {
      const row = await database.tokens.insert({
        tokenHash,
        consoleType: input.consoleType,
        host: input.host,
        port: input.port,
        tlsPort: input.tlsPort ?? null,
        internalAccessPath: input.internalAccessPath ?? null,
        instanceUuid: input.instanceUuid,
        expires: nowSeconds(this.clock) + ttlSeconds,
        accessUrlBase,
        objectVersion: CURRENT_OBJECT_VERSION,
        issuedBy: input.issuedBy,
      });
      this.logger.log(
        {
          cell: cellName,
          tokenId: row.id,
          fingerprint: fingerprintOfHash(tokenHash),
          instance: row.instanceUuid,
          consoleType: row.consoleType,
        },
        'console token issued',
      );
      const issued = ConsoleAuthToken.fromRow(cellName, row, token);
      await this.dualWrite(issued, ttlSeconds);
      return issued;
    } catch (error) {
      if (postgresErrorCode(error) === UNIQUE_VIOLATION) {
        throw tokenInUse();
      }
      throw error;
    }
  }

  /**
   * Rolling upgrades: while KEYHOLE_LEGACY_DUAL_WRITE is on, a new token is also written to the
   * legacy store (in plaintext: that is its format) so proxies that only know that store accept it.
   * The token is valid in the cell database either way, so a failed copy is logged, not fatal.
   */
  private async dualWrite(issued: ConsoleAuthToken, ttlSeconds: number): Promise<void> {
    if (!this.config.legacy.dualWrite || !this.legacy || issued.token === undefined) {
      return;
    }
    const row = issued.row;
    try {
      await this.legacy.write(
        issued.token,
        {
          instanceUuid: row.instanceUuid,
          consoleType: row.consoleType,
          host: row.host,
          port: row.port,
          internalAccessPath: row.internalAccessPath,
          accessUrl: issued.accessUrl ?? '',
        },
        ttlSeconds,
      );
    } catch (error) {
      this.logger.error({ err: error, fingerprint: issued.fingerprint }, 'could not copy the token to the legacy store');
    }
  }

  /**
   * The authorization a presented token grants, if it is known and `expires > now`; otherwise
   * TOKEN_NOT_FOUND, the same whether the token is unknown, expired or revoked.
   */
  async validate(cellName: string, token: string): Promise<ConsoleAuthToken> {
    const database = await this.databases.get(cellName);
    const found = await findValidToken(database.tokens, token, nowSeconds(this.clock));
    if (!found) {
      throw invalidToken();
    }
    return found;
  }

  /**
   * Finds the cell among `cellNames` whose database holds a valid row for the token. A cell that
   * cannot be asked does not hide a token found in another; but when no cell has it and one could
   * not be asked, the answer is that error, not "not found" (fail closed).
   */
  async introspect(cellNames: string[], token: string): Promise<ConsoleAuthToken> {
    if (!isPlausibleToken(token)) {
      throw invalidToken();
    }
    const results = await Promise.allSettled(cellNames.map((cellName) => this.validate(cellName, token)));
    const found = results.find((result) => result.status === 'fulfilled');
    if (found) {
      return found.value;
    }
    const failure = results.find(
      (result): result is PromiseRejectedResult =>
        result.status === 'rejected' && !(result.reason instanceof KeyholeError && result.reason.code === 'TOKEN_NOT_FOUND'),
    );
    if (failure) {
      throw failure.reason;
    }
    throw invalidToken();
  }

  /** A token's stored authorization (never its plaintext), whatever its expiry. */
  async get(cellName: string, id: number): Promise<ConsoleAuthToken> {
    const row = await (await this.databases.get(cellName)).tokens.findById(id);
    if (!row) {
      throw tokenIdNotFound(cellName, id);
    }
    return ConsoleAuthToken.fromRow(cellName, row);
  }

  async list(cellName: string, input: ListTokensInput): Promise<ConsoleAuthToken[]> {
    const rows = await (await this.databases.get(cellName)).tokens.list(input);
    return rows.map((row) => ConsoleAuthToken.fromRow(cellName, row));
  }

  async revokeById(cellName: string, id: number): Promise<void> {
    const deleted = await (await this.databases.get(cellName)).tokens.deleteById(id);
    if (!deleted) {
      throw tokenIdNotFound(cellName, id);
    }
    this.logger.log({ cell: cellName, tokenId: id }, 'console token revoked');
  }

  /** Revokes every token of an instance (Nova's clean_console_auths_for_instance). */
  async revokeByInstance(cellName: string, instanceUuid: string): Promise<number[]> {
    const ids = await (await this.databases.get(cellName)).tokens.deleteAllByInstance(instanceUuid);
    if (this.legacy) {
      // The instance's legacy tokens go too, whoever wrote them (Nova's consoleauth did the same on
      // instance delete). One token revoked by id cannot be found there (keyed by plaintext); a
      // tombstone keeps the fallback from serving it.
      await this.legacy.deleteInstance(instanceUuid).catch((error: unknown) => {
        this.logger.error({ err: error, instance: instanceUuid }, 'could not delete the legacy copies of revoked tokens');
      });
    }
    this.logger.log({ cell: cellName, instance: instanceUuid, revoked: ids.length }, 'instance console tokens revoked');
    return ids;
  }
}

/**
 * The one token check, shared by the API and the console proxy: one indexed lookup of sha256(token)
 * with `expires > nowSeconds`. Null for unknown, expired, revoked and implausible tokens alike;
 * implausible ones (see isPlausibleToken) never reach the database.
 */
export async function findValidToken(
  tokens: ConsoleAuthTokenRepository,
  token: string,
  nowSeconds: number,
): Promise<ConsoleAuthToken | null> {
  if (!isPlausibleToken(token)) {
    return null;
  }
  const row = await tokens.findValidByHash(sha256Hex(token), nowSeconds);
  return row ? ConsoleAuthToken.fromRow(tokens.cellName, row, token) : null;
}
