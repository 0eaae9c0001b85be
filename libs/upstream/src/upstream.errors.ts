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
      | 'ssh channel refused',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'UpstreamError';
  }
}
