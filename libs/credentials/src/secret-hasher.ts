import { randomBytes } from 'node:crypto';
import { Inject, Injectable, OnModuleInit } from '@nestjs/common';
import * as argon2 from 'argon2';
import { KEYHOLE_CONFIG, KeyholeConfig } from '@keyhole/config';

/** argon2id over API key secrets, with the configured cost. The one place keyhole calls argon2. */
@Injectable()
export class SecretHasher implements OnModuleInit {
  private dummyHash: Promise<string> | undefined;

  constructor(@Inject(KEYHOLE_CONFIG) private readonly config: KeyholeConfig) {}

  /** Computes the stand-in hash at start, so the first unknown key id costs what later ones do. */
  async onModuleInit(): Promise<void> {
    await this.standInHash();
  }

  hash(secret: string): Promise<string> {
    const { memoryKib, timeCost, parallelism } = this.config.credentials.argon2;
    return argon2.hash(secret, { type: argon2.argon2id, memoryCost: memoryKib, timeCost, parallelism });
  }

  /** Whether `secret` matches; throws only when the stored hash itself is unreadable. */
  verify(storedHash: string, secret: string): Promise<boolean> {
    return argon2.verify(storedHash, secret);
  }

  /**
   * A verification that costs what a real one does (the configured parameters) and always answers
   * no: for a key id that has no live credential, so that its refusal takes as long as a wrong
   * secret's and does not tell which ids exist. The stand-in hash is of a random secret nobody knows.
   */
  async verifyNothing(secret: string): Promise<false> {
    await argon2.verify(await this.standInHash(), secret);
    return false;
  }

  private standInHash(): Promise<string> {
    this.dummyHash ??= this.hash(randomBytes(32).toString('base64url'));
    return this.dummyHash;
  }
}
