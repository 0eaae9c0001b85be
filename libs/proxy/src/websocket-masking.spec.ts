import { nativeWebSocketMasking } from './websocket-masking';

describe('nativeWebSocketMasking', () => {
  // Without it every uploaded byte is unmasked in a JavaScript loop, at about 4x the proxy's CPU
  // per uploaded megabyte. The dependency must install and load wherever `npm ci` runs.
  it('is true: ws finds bufferutil and its native binding loads', () => {
    expect(nativeWebSocketMasking()).toBe(true);
  });
});
