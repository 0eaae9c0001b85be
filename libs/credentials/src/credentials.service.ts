import { Inject, Injectable, Logger } from '@nestjs/common';
import { CellsService } from '@keyhole/cells';
import { KEYHOLE_CONFIG, KeyholeConfig } from '@keyhole/config';
import { CLOCK, Clock, constantTimeEqual, sha256Hex } from '@keyhole/core';
import { ApiCredentialEntity, ControlDatabase, CredentialRole } from '@keyhole/db';
import { generateApiKey, isCredentialId, parseApiKey } from './api-key';
import { AuthenticationThrottle } from './authentication-throttle';
import { clientAddressKey } from './client-address-key';
import { SecretHasher } from './secret-hasher';
import { credentialNotFound, unauthenticated } from './credentials.errors';

/** Who is calling, once their key is verified. */
export interface Principal {
  credentialId: string;
  name: string;
  role: CredentialRole;
  /** The only cell this principal may act on; null for an operator of every cell. */
  cellName: string | null;
}

export interface CredentialView {
  id: string;
  name: string;
  role: CredentialRole;
  cell: string | null;
  createdAt: string;
  lastUsedAt: string | null;
  revokedAt: string | null;
}

export interface CreateCredentialInput {
  name: string;
  role: CredentialRole;
  cellName: string | null;
}

interface VerifiedEntry {
  /** sha256 of the secret that argon2 accepted; a later request must present the same. */
  secretDigest: string;
  verifiedAtMs: number;
}

/** Remembered verifications are bounded so random secrets cannot grow memory. */
const MAX_CACHED_VERIFICATIONS = 10_000;
/** `last_used_at` is written at most this often per credential. */
const LAST_USED_WRITE_INTERVAL_MS = 60_000;

/**
 * API credentials of agents and operators. The key's secret is checked with argon2id once; a
 * success is remembered for `cacheTtlMs` (by a SHA-256 digest compared in constant time) so
 * requests do not pay argon2 each time. The row itself is read on every request, so a revoked key
 * stops working at once on every replica.
 */
@Injectable()
export class CredentialsService {
  private readonly logger = new Logger(CredentialsService.name);
  private readonly verified = new Map<string, VerifiedEntry>();
  private readonly lastUsedWrittenAtMs = new Map<string, number>();
  /** Verifications under way, by key id and secret digest; an entry lives as long as its verification. */
  private readonly verifying = new Map<string, Promise<ApiCredentialEntity | null>>();

  constructor(
    @Inject(KEYHOLE_CONFIG) private readonly config: KeyholeConfig,
    @Inject(CLOCK) private readonly clock: Clock,
    private readonly control: ControlDatabase,
    private readonly cells: CellsService,
    private readonly hasher: SecretHasher,
    private readonly throttle: AuthenticationThrottle,
  ) {}

  /** Creates a credential and returns its key: the only time the key exists outside its holder. */
  async create(input: CreateCredentialInput): Promise<{ credential: CredentialView; key: string }> {
    if (input.cellName !== null) {
      await this.cells.get(input.cellName);
    }
    const { id, secret, key } = generateApiKey();
    const secretHash = await this.hasher.hash(secret);
    const row = await this.control.credentials.insert({
      id,
      name: input.name,
      role: input.role,
      cellName: input.cellName,
      secretHash,
    });
    this.logger.log({ credentialId: id, role: input.role, cell: input.cellName }, 'API credential created');
    return { credential: toView(row), key };
  }

  /**
   * The principal of a presented key; UNAUTHENTICATED for any failure, whatever its reason.
   *
   * A key verified in the last `cacheTtlMs` is accepted from the cache (no argon2, no limit). Any
   * other attempt first reserves a failure of its key id and of its client address
   * (TOO_MANY_REQUESTS when either is spent: no argon2 work then), then runs argon2 within the
   * concurrency cap (AUTHENTICATION_BUSY when its queue is full). An unknown or revoked id is
   * verified against a stand-in hash of the same cost, so that its refusal takes as long as a
   * wrong secret's and does not tell which ids exist. A right key gives its reservation back.
   *
   * @param clientAddress the client as logs show it (after KEYHOLE_TRUSTED_PROXIES); null if unknown
   */
  async authenticate(presented: string | undefined, clientAddress: string | null = null): Promise<Principal> {
    const parsed = presented === undefined ? null : parseApiKey(presented);
    if (!parsed) {
      this.throttle.refused('malformed');
      throw unauthenticated();
    }
    const digest = sha256Hex(parsed.secret);
    if (this.isVerified(parsed.id, digest)) {
      const row = await this.control.credentials.findById(parsed.id);
      if (row && row.revokedAt === null) {
        return this.admit(row);
      }
      // Revoked since it was verified (perhaps on another replica).
      this.verified.delete(parsed.id);
      this.throttle.refused('bad_key');
      throw unauthenticated();
    }
    // Requests that present the same key at the same time (a client opening many connections at
    // once) share one verification and one failure point: the first one's.
    const attempt = `${parsed.id}:${digest}`;
    let verification = this.verifying.get(attempt);
    if (!verification) {
      verification = this.verify(parsed.id, parsed.secret, digest, clientAddressKey(clientAddress)).finally(() =>
        this.verifying.delete(attempt),
      );
      this.verifying.set(attempt, verification);
    }
    const live = await verification;
    if (!live) {
      this.throttle.refused('bad_key');
      throw unauthenticated();
    }
    return this.admit(live);
  }

  /**
   * The principal of a verified client certificate whose subject CN is `credentialId` (the TLS
   * layer checked it against KEYHOLE_API_TLS_CLIENT_CA_FILE). The row is read on every request,
   * as for a key, so a revoked credential's certificate stops working at once. UNAUTHENTICATED
   * for an unknown or revoked id, like a bad key.
   */
  async authenticateCertificate(credentialId: string): Promise<Principal> {
    if (!isCredentialId(credentialId)) {
      throw unauthenticated();
    }
    // No secret to guess (the CA vouched for the holder), so no argon2 and no failure limit.
    const row = await this.control.credentials.findById(credentialId);
    if (!row || row.revokedAt !== null) {
      throw unauthenticated();
    }
    return this.admit(row);
  }

  async list(options: { includeRevoked: boolean; cellName?: string | null }): Promise<CredentialView[]> {
    const rows = await this.control.credentials.listAll(options.includeRevoked);
    return rows
      .filter((row) => options.cellName === undefined || options.cellName === null || row.cellName === options.cellName)
      .map(toView);
  }

  async get(id: string): Promise<CredentialView> {
    const row = await this.control.credentials.findById(id);
    if (!row) {
      throw credentialNotFound(id);
    }
    return toView(row);
  }

  /** Revokes a credential; it is refused from the next request on. */
  async revoke(id: string): Promise<void> {
    const revoked = await this.control.credentials.markRevoked(id);
    this.verified.delete(id);
    if (!revoked) {
      throw credentialNotFound(id);
    }
    this.logger.log({ credentialId: id }, 'API credential revoked');
  }

  /**
   * Reserves a failure, reads the row and runs argon2 (against the stand-in hash when the id has
   * no live credential); the live row when the secret is right, else null.
   */
  private async verify(id: string, secret: string, digest: string, address: string): Promise<ApiCredentialEntity | null> {
    const grant = await this.throttle.reserve(id, address);
    try {
      const row = await this.control.credentials.findById(id);
      const live = row !== null && row.revokedAt === null ? row : null;
      const matches = await this.throttle.verify(address, () =>
        live ? this.secretMatches(live, secret) : this.hasher.verifyNothing(secret),
      );
      if (!live || !matches) {
        return null;
      }
      await grant.release();
      this.remember(id, digest);
      return live;
    } catch (error) {
      // Not a failure of the key (database down, verifications busy): its point is given back.
      await grant.release();
      throw error;
    }
  }

  /** Whether this exact secret of `id` was verified by argon2 within the cache's lifetime. */
  private isVerified(id: string, digest: string): boolean {
    const cached = this.verified.get(id);
    return (
      cached !== undefined &&
      this.clock.nowMs() - cached.verifiedAtMs < this.config.credentials.cacheTtlMs &&
      constantTimeEqual(cached.secretDigest, digest)
    );
  }

  private remember(id: string, digest: string): void {
    if (this.config.credentials.cacheTtlMs <= 0) {
      return;
    }
    if (this.verified.size >= MAX_CACHED_VERIFICATIONS) {
      this.verified.clear();
    }
    this.verified.set(id, { secretDigest: digest, verifiedAtMs: this.clock.nowMs() });
  }

  private admit(row: ApiCredentialEntity): Principal {
    this.noteUse(row.id);
    return { credentialId: row.id, name: row.name, role: row.role, cellName: row.cellName };
  }

  private async secretMatches(row: ApiCredentialEntity, secret: string): Promise<boolean> {
    try {
      return await this.hasher.verify(row.secretHash, secret);
    } catch (error) {
      this.logger.error({ credentialId: row.id, err: error }, 'stored credential hash cannot be verified');
      return false;
    }
  }

  private noteUse(id: string): void {
    const now = this.clock.nowMs();
    const last = this.lastUsedWrittenAtMs.get(id);
    if (last !== undefined && now - last < LAST_USED_WRITE_INTERVAL_MS) {
      return;
    }
    if (this.lastUsedWrittenAtMs.size >= MAX_CACHED_VERIFICATIONS) {
      this.lastUsedWrittenAtMs.clear();
    }
    this.lastUsedWrittenAtMs.set(id, now);
    // Bookkeeping only: a failed write must not fail the request it belongs to.
    this.control.credentials.touchLastUsed(id).catch((error: unknown) => {
      this.logger.warn({ credentialId: id, err: error }, 'could not record credential use');
    });
  }
}

function toView(row: ApiCredentialEntity): CredentialView {
  return {
    id: row.id,
    name: row.name,
    role: row.role,
    cell: row.cellName,
    createdAt: row.createdAt.toISOString(),
    lastUsedAt: row.lastUsedAt?.toISOString() ?? null,
    revokedAt: row.revokedAt?.toISOString() ?? null,
  };
}
