import type { Duplex } from 'node:stream';
import { endWithJson } from '@keyhole/core';
import type { ConnectResult } from './proxy.metrics';

/**
 * Why a websocket upgrade is refused, with what its message needs. Nothing here may hold a token:
 * the message goes to the client and the kind's label to a metric.
 */
interface RefusalDetails {
  draining: object;
  no_token: object;
  /** Unknown, expired, revoked or implausible: one answer for all. */
  invalid_token: object;
  wrong_console_type: { consoleType: string };
  forbidden_origin: { reason: string };
  console_busy: { consoleType: string; heldBy: string };
  /** No route of the routes file allows the token's host:port (SSRF guard); the message names neither. */
  unroutable: object;
  /** The cell database (or the legacy store) could not be asked: fail closed. */
  unavailable: object;
  /** The checks passed but the websocket handshake itself is not valid (key, version, subprotocols, method). */
  invalid_handshake: object;
  /** The client offers subprotocols but not `binary` (e.g. only websockify's old `base64`). */
  unsupported_subprotocol: object;
  /** A bug: the upgrade threw. */
  internal_error: object;
}

export type RefusalKind = keyof RefusalDetails;

/** A refused upgrade: its kind and the details of that kind. */
export type Refusal<K extends RefusalKind = RefusalKind> = { [P in K]: { readonly kind: P } & Readonly<RefusalDetails[P]> }[K];

interface RefusalAnswer<K extends RefusalKind> {
  status: number;
  /** The `message` of the JSON body (`{"code": "<KIND>", "message"}`, the code being the kind in capitals). */
  message: (refusal: Refusal<K>) => string;
  /** The label of `keyhole_proxy_connects_total`. */
  metric: Exclude<ConnectResult, 'accepted' | 'upstream_failed'>;
}

/**
 * Every refusal's answer, in one table: a kind without an entry does not compile. Statuses are the
 * design's (token 401, console type 404, origin 403, busy exclusive console 409, cannot check 503);
 * a destination no route allows is 403 too, a websocket handshake that is not valid 400.
 */
export const REFUSALS: { readonly [K in RefusalKind]: RefusalAnswer<K> } = {
  draining: { status: 503, message: () => 'proxy is shutting down', metric: 'draining' },
  no_token: { status: 401, message: () => 'a console token is required', metric: 'no_token' },
  invalid_token: { status: 401, message: () => 'invalid or expired token', metric: 'invalid_token' },
  wrong_console_type: {
    status: 404,
    message: (refusal) => `this proxy does not serve ${refusal.consoleType} consoles`,
    metric: 'wrong_console_type',
  },
  forbidden_origin: { status: 403, message: (refusal) => refusal.reason, metric: 'forbidden_origin' },
  console_busy: {
    status: 409,
    message: (refusal) => `console busy: another session (${refusal.heldBy}) is connected to this ${refusal.consoleType} port`,
    metric: 'console_busy',
  },
  unroutable: { status: 403, message: () => 'console destination is not routable from this proxy', metric: 'unroutable' },
  unavailable: { status: 503, message: () => 'console authorization is unavailable', metric: 'unavailable' },
  invalid_handshake: {
    status: 400,
    message: () => 'not a valid websocket handshake (GET, Upgrade: websocket, a Sec-WebSocket-Key, Sec-WebSocket-Version: 13)',
    metric: 'invalid_handshake',
  },
  unsupported_subprotocol: {
    status: 400,
    message: () =>
      'this proxy speaks only the "binary" websocket subprotocol: offer "binary", or no subprotocol ("base64" is not supported)',
    metric: 'unsupported_subprotocol',
  },
  internal_error: { status: 500, message: () => 'internal error', metric: 'unavailable' },
};

/**
 * Answers a refused upgrade with its status line and message and closes the socket (or destroys
 * it when it can no longer be written). Returns the refusal's metric label.
 */
export function refuseUpgrade<K extends RefusalKind>(socket: Duplex, refusal: Refusal<K>): RefusalAnswer<K>['metric'] {
  const answer: RefusalAnswer<K> = REFUSALS[refusal.kind];
  // The proxy's one error shape (as its plain HTTP errors): a stable code and a message that never
  // repeats the request (its query holds the token).
  endWithJson(socket, answer.status, { code: refusal.kind.toUpperCase(), message: answer.message(refusal) });
  return answer.metric;
}
