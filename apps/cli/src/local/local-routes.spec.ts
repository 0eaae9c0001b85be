import { parseRoutesFile } from '@keyhole/upstream';
import { localRoutesFile } from './local-routes';

describe("keyhole local's routes file", () => {
  it('allows loopback console ports, IPv4 and IPv6, and nothing else', () => {
    const routes = parseRoutesFile(localRoutesFile([7880, 6081, 6082, 45123]), 'routes.yaml');
    for (const [host, port] of [
      ['127.0.0.1', 5900],
      ['127.0.0.1', 5999],
      ['127.0.0.1', 10000],
      ['127.0.0.1', 20000],
      ['::1', 5901],
    ] as const) {
      expect(routes.match(host, port)).toBeDefined();
    }
    for (const [host, port] of [
      ['127.0.0.1', 7880],
      ['127.0.0.1', 6081],
      ['127.0.0.1', 45123],
      ['127.0.0.1', 5432],
      ['::1', 6379],
      ['169.254.10.1', 5900],
      ['localhost', 5900],
    ] as const) {
      expect(routes.match(host, port)).toBeUndefined();
    }
  });

  it("leaves out the deployment's own ports where they fall inside a console range", () => {
    const routes = parseRoutesFile(localRoutesFile([17880, 5999, 10001, 15432]), 'routes.yaml');
    for (const port of [17880, 5999, 10001, 15432]) {
      expect(routes.match('127.0.0.1', port)).toBeUndefined();
      expect(routes.match('::1', port)).toBeUndefined();
    }
    for (const port of [17879, 17881, 5998, 10000, 10002, 15431, 15433]) {
      expect(routes.match('127.0.0.1', port)?.name).toBe('loopback-ipv4');
      expect(routes.match('::1', port)?.name).toBe('loopback-ipv6');
    }
  });
});
