import { CellsService } from '@keyhole/cells';
import { testConfig } from '../support/config';
import { RunningProxy, startConsoleProxy } from '../support/console-proxy';
import { queryDatabase } from '../support/databases';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { echo, startTcpUpstream, TcpUpstream } from '../support/tcp-upstreams';
import { call } from '../support/token-api';
import { waitUntil } from '../support/wait';
import { connectConsole, expectRefusedUpgrade } from '../support/websocket-client';
import { issueBody } from './helpers';

/*
 * X-Forwarded-Proto and X-Forwarded-For are believed only from the proxies in
 * KEYHOLE_TRUSTED_PROXIES. Every request here comes from 127.0.0.1: one console proxy trusts it
 * (127.0.0.0/8), one trusts another network (10.0.0.0/8), one trusts nobody (the default). The cell
 * is served over https behind a TLS terminator, so the origin check needs the forwarded scheme.
 */

jest.setTimeout(60_000);

const HOST = 'cell1.console.test';

describe('trusted front proxies', () => {
  let deployment: TestDeployment;
  let upstream: TcpUpstream;
  let trusting: RunningProxy;
  let trustingOthers: RunningProxy;
  let trustingNobody: RunningProxy;

  const startProxy = (trustedProxies: string | undefined) =>
    startConsoleProxy(
      testConfig(deployment.controlUrl, {
        KEYHOLE_CELL_NAME: 'cell1',
        KEYHOLE_CELL_DATABASE_URL: deployment.cellUrls.cell1,
        ...(trustedProxies === undefined ? {} : { KEYHOLE_TRUSTED_PROXIES: trustedProxies }),
      }),
    );

  beforeAll(async () => {
    deployment = await startTestDeployment();
    await deployment.api.app.get(CellsService).updateProxyUrl('cell1', `https://${HOST}`);
    upstream = await startTcpUpstream(echo);
    trusting = await startProxy('127.0.0.0/8, ::1');
    trustingOthers = await startProxy('10.0.0.0/8');
    trustingNobody = await startProxy(undefined);
  }, 60_000);

  afterAll(async () => {
    for (const proxy of [trusting, trustingOthers, trustingNobody]) {
      await proxy?.close();
    }
    await upstream?.close();
    await deployment?.stop();
  });

  async function issue(): Promise<{ id: number; token: string }> {
    const response = await call(deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
      key: deployment.agentKeys.cell1,
      body: issueBody({ host: '127.0.0.1', port: upstream.port }),
    });
    expect(response.status).toBe(201);
    return response.body;
  }

  const consoleUrl = (proxy: RunningProxy, token: string) => `${proxy.wsBase}/websockify?token=${encodeURIComponent(token)}`;

  /** Connects (an http page whose terminator says https, say) and echoes a byte, or expects the refusal's status. */
  async function attempt(proxy: RunningProxy, origin: string, headers: Record<string, string>): Promise<number> {
    const target = consoleUrl(proxy, (await issue()).token);
    let client: Awaited<ReturnType<typeof connectConsole>>;
    try {
      client = await connectConsole(target, { origin, headers: { host: HOST, ...headers } });
    } catch {
      // Refused: ask again to read the answer (a refused token is not used up).
      return (await expectRefusedUpgrade(target, { origin, headers: { host: HOST, ...headers } })).status;
    }
    expect((await client.roundTrip('x')).toString()).toBe('x');
    await client.close();
    return 101;
  }

  describe("the proxy's origin check", () => {
    it('believes X-Forwarded-Proto from a trusted peer', async () => {
      // Nova's case: an Origin of http, while the terminator says the page came over https.
      expect(await attempt(trusting, `http://${HOST}`, { 'x-forwarded-proto': 'https' })).toBe(101);
      // The terminator says the page came over http: not the access URL's scheme.
      expect(await attempt(trusting, `https://${HOST}`, { 'x-forwarded-proto': 'http' })).toBe(403);
    });

    it('ignores X-Forwarded-Proto from a peer it does not trust, and without any trusted proxy', async () => {
      for (const proxy of [trustingOthers, trustingNobody]) {
        expect(await attempt(proxy, `http://${HOST}`, { 'x-forwarded-proto': 'https' })).toBe(403);
        expect(await attempt(proxy, `https://${HOST}`, { 'x-forwarded-proto': 'http' })).toBe(101);
      }
    });
  });

  describe("the session's client address", () => {
    async function clientAddressOf(proxy: RunningProxy, forwardedFor: string): Promise<string | null> {
      const token = await issue();
      const client = await connectConsole(consoleUrl(proxy, token.token), {
        origin: `https://${HOST}`,
        headers: { host: HOST, 'x-forwarded-for': forwardedFor },
      });
      expect((await client.roundTrip('x')).toString()).toBe('x');
      await client.close();
      const row = await waitUntil(
        async () =>
          (
            await queryDatabase<{ client_address: string | null }>(
              deployment.cellUrls.cell1,
              'SELECT client_address FROM console_sessions WHERE token_id = $1',
              [token.id],
            )
          )[0],
        10_000,
        'the session row',
      );
      return row.client_address;
    }

    it('is the right-most untrusted X-Forwarded-For hop behind a trusted proxy, never a hop the client wrote', async () => {
      // The client wrote 1.2.3.4; the terminator appended the address it saw.
      expect(await clientAddressOf(trusting, '1.2.3.4, 203.0.113.9')).toBe('203.0.113.9');
      // Another trusted hop (an inner balancer) after it is skipped.
      expect(await clientAddressOf(trusting, '1.2.3.4, 203.0.113.9, 127.0.0.5')).toBe('203.0.113.9');
    });

    it('is the peer when the peer is not trusted', async () => {
      expect(await clientAddressOf(trustingOthers, '1.2.3.4, 203.0.113.9')).toBe('127.0.0.1');
      expect(await clientAddressOf(trustingNobody, '203.0.113.9')).toBe('127.0.0.1');
    });
  });
});
