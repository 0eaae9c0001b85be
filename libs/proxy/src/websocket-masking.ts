import { createRequire } from 'node:module';
import * as http from 'node:http';

/**
 * Whether `ws` unmasks the browser's frames in native code. Every byte a browser sends is masked
 * (RFC 6455), and `ws` unmasks it in a JavaScript byte loop unless `bufferutil` loads: that loop
 * made the console direction of a bulk upload cost about 4x the CPU. `bufferutil` ships its
 * binaries inside the package, and falls back to JavaScript without a word when they do not load,
 * so the proxy reports this at start. (`ws` also skips `bufferutil` when WS_NO_BUFFER_UTIL is set.)
 */
export function nativeWebSocketMasking(): boolean {
  // Newer Node versions bring the same routine, which `ws` prefers.
  if ('websocketUnmask' in http) {
    return true;
  }
  try {
    // Resolved as `ws` resolves it, from its own directory.
    const requireFromWs = createRequire(require.resolve('ws'));
    const bufferUtil: unknown = requireFromWs('bufferutil');
    return bufferUtil !== requireFromWs('bufferutil/fallback');
  } catch {
    return false;
  }
}
