/** Why a console could not be reached; `reason` is short enough for a websocket close frame. */
export class UpstreamError extends Error {
  constructor(
    readonly reason: 'connect timeout' | 'connect refused' | 'connect failed' | 'CONNECT refused' | 'CONNECT malformed',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'UpstreamError';
  }
}
