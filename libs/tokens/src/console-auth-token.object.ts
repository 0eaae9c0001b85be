import { ConsoleAuthTokenEntity } from '@keyhole/db';
import { fingerprintOfHash } from '@keyhole/core';

/**
 * Versions of the ConsoleAuthToken object. 1.0-1.3 are Nova's (1.1 added the global purge, 1.2
 * `expires`, 1.3 `tls_port`); 1.4 is keyhole's first (`issuedBy`, `fingerprint`). A client may ask
 * for any of them and gets the fields that version had, like Nova's `obj_make_compatible`.
 */
export const OBJECT_VERSIONS = ['1.0', '1.1', '1.2', '1.3', '1.4'] as const;
export type ObjectVersion = (typeof OBJECT_VERSIONS)[number];
export const CURRENT_OBJECT_VERSION: ObjectVersion = '1.4';

export function isObjectVersion(value: string): value is ObjectVersion {
  return (OBJECT_VERSIONS as readonly string[]).includes(value);
}

/** The version in which each field of the object (as the API names it) first appeared. */
const FIELD_SINCE = {
  id: '1.0',
  consoleType: '1.0',
  host: '1.0',
  port: '1.0',
  internalAccessPath: '1.0',
  instanceUuid: '1.0',
  accessUrlBase: '1.0',
  createdAt: '1.0',
  updatedAt: '1.0',
  expires: '1.2',
  expiresAt: '1.2',
  tlsPort: '1.3',
  issuedBy: '1.4',
  fingerprint: '1.4',
} as const satisfies Record<string, ObjectVersion>;

export type ConsoleAuthTokenPrimitive = {
  objectVersion: ObjectVersion;
} & Partial<{
  id: number;
  consoleType: string;
  host: string;
  port: number;
  internalAccessPath: string | null;
  instanceUuid: string;
  accessUrlBase: string | null;
  createdAt: string | null;
  updatedAt: string | null;
  expires: number;
  expiresAt: string;
  tlsPort: number | null;
  issuedBy: string | null;
  fingerprint: string;
}>;

/**
 * A console authorization as stored in a cell database. The plaintext token is only ever held in
 * memory, by the one call that created it (`authorize`) or was presented with it (`validate`).
 */
export class ConsoleAuthToken {
  private constructor(
    readonly cellName: string,
    readonly row: ConsoleAuthTokenEntity,
    /** Present only right after authorize/validate; never stored, never logged. */
    readonly token: string | undefined,
  ) {}

  static fromRow(cellName: string, row: ConsoleAuthTokenEntity, token?: string): ConsoleAuthToken {
    return new ConsoleAuthToken(cellName, row, token);
  }

  get id(): number {
    return this.row.id;
  }

  /** What logs and errors show instead of the token. */
  get fingerprint(): string {
    return fingerprintOfHash(this.row.tokenHash);
  }

  /**
   * The URL a browser opens, built from the stored base and the plaintext token (Nova's rules):
   * noVNC takes the websocket path from `path`, so the token goes inside it
   * (`BASE?path=websockify%3Ftoken%3DTOKEN`), keeping any query the base has and appending to an
   * existing `path`; every other type gets `BASE?token=TOKEN`. Null without a token or base.
   */
  get accessUrl(): string | null {
    return buildAccessUrl(this.row.consoleType, this.row.accessUrlBase, this.token);
  }

  /** The object's fields as the API shows them, limited to what `version` had. */
  toPrimitive(version: ObjectVersion = CURRENT_OBJECT_VERSION): ConsoleAuthTokenPrimitive {
    const all: Required<Omit<ConsoleAuthTokenPrimitive, 'objectVersion'>> = {
      id: this.row.id,
      consoleType: this.row.consoleType,
      host: this.row.host,
      port: this.row.port,
      internalAccessPath: this.row.internalAccessPath,
      instanceUuid: this.row.instanceUuid,
      accessUrlBase: this.row.accessUrlBase,
      createdAt: this.row.createdAt?.toISOString() ?? null,
      updatedAt: this.row.updatedAt?.toISOString() ?? null,
      expires: this.row.expires,
      expiresAt: new Date(this.row.expires * 1000).toISOString(),
      tlsPort: this.row.tlsPort,
      issuedBy: this.row.issuedBy,
      fingerprint: this.fingerprint,
    };
    return { objectVersion: version, ...makeCompatible(all, version) };
  }
}

/** Drops the fields that `version` did not have yet. */
export function makeCompatible<T extends Record<string, unknown>>(fields: T, version: ObjectVersion): Partial<T> {
  const target = OBJECT_VERSIONS.indexOf(version);
  const result: Partial<T> = {};
  for (const name of Object.keys(fields) as (keyof T & string)[]) {
    const since = FIELD_SINCE[name as keyof typeof FIELD_SINCE] as ObjectVersion | undefined;
    if (since === undefined || OBJECT_VERSIONS.indexOf(since) <= target) {
      result[name] = fields[name];
    }
  }
  return result;
}

export function buildAccessUrl(consoleType: string, base: string | null, token: string | undefined): string | null {
  if (!base || token === undefined) {
    return null;
  }
  if (consoleType !== 'novnc') {
    return `${base}${base.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
  }
  const url = new URL(base);
  // noVNC (>= 1.1) opens its websocket at `path`; the proxy accepts any path and reads `token`.
  const existingPath = url.searchParams.get('path') ?? 'websockify';
  url.searchParams.set('path', `${existingPath}${existingPath.includes('?') ? '&' : '?'}token=${token}`);
  return url.toString();
}
