import { createHash } from 'node:crypto';
import { inspect } from 'node:util';
import { ParsedKey, utils } from 'ssh2';

const REDACTED = '[ssh private key]';

/**
 * An SSH private key (and its passphrase) held in memory only. It cannot be printed: JSON, `inspect`
 * and string conversion all give a placeholder, so a route object that reaches a log line, an error
 * or `keyhole routes check` carries no key. Only the node connection reads it, with `material()`.
 */
export class SshPrivateKey {
  readonly #key: Buffer;
  readonly #passphrase: Buffer | undefined;
  /** SHA-256 of key and passphrase: tells two keys apart (node identity) without holding either. */
  readonly digest: string;

  private constructor(key: Buffer, passphrase: Buffer | undefined) {
    this.#key = key;
    this.#passphrase = passphrase;
    const hash = createHash('sha256').update(key);
    if (passphrase !== undefined) {
      hash.update('\0').update(passphrase);
    }
    this.digest = hash.digest('hex');
  }

  /**
   * Checks that `key` is a private key ssh2 can use (OpenSSH or PEM; `passphrase` for an encrypted
   * one). The error says what is wrong, never what the key holds.
   */
  static parse(key: Buffer, passphrase?: Buffer): SshPrivateKey | { error: string } {
    let parsed: ParsedKey | Error;
    try {
      parsed = utils.parseKey(key, passphrase);
    } catch {
      parsed = new Error('unreadable');
    }
    if (parsed instanceof Error) {
      return { error: 'is not an OpenSSH or PEM private key that can be used (or its passphrase is wrong or missing)' };
    }
    if (!parsed.isPrivateKey()) {
      return { error: 'is a public key, not a private key' };
    }
    return new SshPrivateKey(key, passphrase);
  }

  /** The key for the SSH client, and nothing else. */
  material(): { privateKey: Buffer; passphrase?: Buffer } {
    return this.#passphrase === undefined ? { privateKey: this.#key } : { privateKey: this.#key, passphrase: this.#passphrase };
  }

  toJSON(): string {
    return REDACTED;
  }

  toString(): string {
    return REDACTED;
  }

  [inspect.custom](): string {
    return REDACTED;
  }
}
