/** Why a console could not be reached; `reason` is short enough for a websocket close frame. */
export class UpstreamError extends Error {
  constructor(
    readonly reason:
      | 'connect timeout'
      | 'connect refused'
      | 'connect failed'
      | 'CONNECT refused'
      | 'CONNECT malformed'
      // An SSH proxy node (ssh routes):
      | 'ssh node unreachable'
      | 'ssh auth failed'
      | 'ssh host key mismatch'
      | 'ssh channel refused'
      | ConnectorFailure,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'UpstreamError';
  }
}

/**
 * How a `via: connector` route fails: no connector on the socket, the connector's answer (its own
 * allow-list, its connect to the console, the header it was sent), or the socket failing otherwise.
 */
export type ConnectorFailure =
  | 'connector missing'
  | 'connector closed'
  | 'connector failed'
  | 'connector refused: not allowed'
  | 'connector refused: connect failed'
  | 'connector refused: timeout'
  | 'connector refused: malformed'
  | 'connector refused: unsupported version'
  | 'connector refused: unknown status';
