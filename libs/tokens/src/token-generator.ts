import { randomBytes } from 'node:crypto';

/** Produces new plaintext console tokens. Injected so tests can force a collision. */
export type TokenGenerator = () => string;

export const TOKEN_GENERATOR = Symbol('keyhole.tokenGenerator');

/** 32 bytes from the CSPRNG as base64url: 43 characters, 256 bits. */
export const randomTokenGenerator: TokenGenerator = () => randomBytes(32).toString('base64url');
