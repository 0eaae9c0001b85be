import { Inject, Injectable } from '@nestjs/common';
import * as argon2 from 'argon2';
import { KEYHOLE_CONFIG, KeyholeConfig } from '@keyhole/config';

/** argon2id over API key secrets, with the configured cost. The one place keyhole calls argon2. */
@Injectable()
export class SecretHasher {
  constructor(@Inject(KEYHOLE_CONFIG) private readonly config: KeyholeConfig) {}

  hash(secret: string): Promise<string> {
    const { memoryKib, timeCost, parallelism } = this.config.credentials.argon2;
    return argon2.hash(secret, { type: argon2.argon2id, memoryCost: memoryKib, timeCost, parallelism });
  }

  /** Whether `secret` matches; throws only when the stored hash itself is unreadable. */
  verify(storedHash: string, secret: string): Promise<boolean> {
    return argon2.verify(storedHash, secret);
  }
}
