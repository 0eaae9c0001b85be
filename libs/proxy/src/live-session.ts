import type { ConsoleBridge } from './console-bridge';

/** A proxied connection while it lasts: what the registry needs to find and end it. */
export interface LiveSession {
  id: string;
  /** Null for a token that came from the legacy store. */
  tokenId: number | null;
  tokenFingerprint: string;
  instanceUuid: string;
  consoleType: string;
  host: string;
  port: number;
  clientAddress: string | null;
  /** The route that reaches the console (null without a routes file). */
  route: string | null;
  /** The token's expiry, epoch seconds. */
  expires: number;
  bridge: ConsoleBridge;
}
