import { Logger } from '@nestjs/common';
import { createHash, randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { ManualClock } from '@keyhole/core';
import type { ConsoleGrantRow } from '@keyhole/db';
import type { LegacyAuthorization } from '@keyhole/legacy-store';
import { decideRoute, parseRoutesFile, Routes } from '@keyhole/upstream';
import { UpgradeGate, UpgradeGateOptions } from './upgrade-gate';
import { Refusal, RefusalKind, REFUSALS, refuseUpgrade } from './upgrade-refusals';

const NOW_SECONDS = 1_800_000_000;
const TOKEN = randomBytes(32).toString('base64url');
const TOKEN_HASH = createHash('sha256').update(TOKEN).digest('hex');
const FINGERPRINT = TOKEN_HASH.slice(0, 12);
const INSTANCE = '11111111-1111-4111-8111-111111111111';

/** A mock that fails the test when it is called without the test having planned it. */
function strictFn(name: string): jest.Mock {
  return jest.fn(() => {
    throw new Error(`unexpected call of ${name}`);
  });
}

function row(overrides: Partial<ConsoleGrantRow> = {}): ConsoleGrantRow {
  return {
    id: 7,
    tokenHash: TOKEN_HASH,
    consoleType: 'novnc',
    host: '192.0.2.10',
    port: 5900,
    internalAccessPath: null,
    instanceUuid: INSTANCE,
    expires: NOW_SECONDS + 600,
    accessUrlBase: 'https://console.example/vnc_auto.html',
    ...overrides,
  };
}

function request(target: string, headers: Record<string, string> = {}): IncomingMessage {
  return { url: target, headers, socket: { remoteAddress: '198.51.100.7' } } as unknown as IncomingMessage;
}

const withToken = (headers: Record<string, string> = {}) =>
  request(`/websockify?token=${TOKEN}`, { host: 'console.example', origin: 'https://console.example', ...headers });

/** The gate's view of a routes table (undefined: no routes file, every destination allowed). */
function routing(routes: Routes | undefined): UpgradeGateOptions['routes'] {
  return { decide: (host, port) => decideRoute(routes, host, port) };
}

function setUp(options: Partial<UpgradeGateOptions> = {}) {
  const cell = {
    tokens: { findValidByHashes: strictFn('tokens.findValidByHashes'), isRevokedHash: strictFn('tokens.isRevokedHash') },
    sessions: { insertExclusive: strictFn('sessions.insertExclusive') },
    settings: { current: strictFn('settings.current') },
  };
  const recorder = { record: strictFn('recorder.record') };
  const legacyLookups = { inc: strictFn('legacyLookups.inc') };
  const legacy = { lookup: strictFn('legacy.lookup') };
  const gate = new UpgradeGate(
    {
      cellName: 'cell1',
      instance: 'proxy-1',
      settings: {
        consoleTypes: ['novnc', 'serial'],
        allowedOrigins: [],
        trustedProxies: [],
        sessionStaleMs: 30_000,
        connectTimeoutMs: 5_000,
      },
      legacy,
      routes: routing(undefined),
      ...options,
    },
    cell,
    recorder,
    { legacyLookups } as never,
    new ManualClock(NOW_SECONDS * 1000),
  );
  return { gate, cell, recorder, legacyLookups, legacy };
}

type Setup = ReturnType<typeof setUp>;

function storedRows(setup: Setup, ...rows: ConsoleGrantRow[]): void {
  setup.cell.tokens.findValidByHashes.mockImplementation(async (hashes: string[]) =>
    rows.filter((candidate) => hashes.includes(candidate.tokenHash)),
  );
}

async function turnFallbackOn(setup: Setup): Promise<void> {
  setup.cell.settings.current.mockResolvedValueOnce({ value: { enabled: true } });
  await setup.gate.readFallbackFlag();
  expect(setup.gate.fallbackEnabled).toBe(true);
}

describe('UpgradeGate', () => {
  let logged: unknown[][];

  beforeEach(() => {
    logged = [];
    for (const level of ['log', 'debug', 'warn', 'error'] as const) {
      jest.spyOn(Logger.prototype, level).mockImplementation((...args: unknown[]) => void logged.push(args));
    }
  });

  afterEach(() => {
    jest.restoreAllMocks();
    // No token in any log line, whatever the test did.
    expect(JSON.stringify(logged)).not.toContain(TOKEN);
  });

  it('refuses an upgrade without a token, asking no one', async () => {
    const setup = setUp();
    expect(await setup.gate.check(request('/websockify'))).toEqual({ kind: 'no_token' });
  });

  it('refuses an implausible token without database work', async () => {
    const setup = setUp();
    for (const presented of ['x'.repeat(257), 'abc%01def', 't%C3%B6k%C3%A9n']) {
      expect(await setup.gate.check(request(`/?token=${presented}`))).toEqual({ kind: 'invalid_token' });
    }
    expect(setup.cell.tokens.findValidByHashes).not.toHaveBeenCalled();
  });

  it('refuses an unknown token; with the fallback off the legacy store is not asked', async () => {
    const setup = setUp();
    storedRows(setup);
    expect(await setup.gate.check(withToken())).toEqual({ kind: 'invalid_token' });
    expect(setup.cell.tokens.findValidByHashes).toHaveBeenCalledWith([TOKEN_HASH], NOW_SECONDS);
    expect(setup.legacy.lookup).not.toHaveBeenCalled();
  });

  it('fails closed when the cell database cannot be asked', async () => {
    const setup = setUp();
    setup.cell.tokens.findValidByHashes.mockRejectedValue(new Error('connection refused'));
    expect(await setup.gate.check(withToken())).toEqual({ kind: 'unavailable' });
    expect(logged).toContainEqual([expect.objectContaining({ fingerprint: FINGERPRINT }), 'token lookup failed']);
  });

  it('refuses a console type this proxy does not serve', async () => {
    const setup = setUp();
    storedRows(setup, row({ consoleType: 'spice-html5' }));
    expect(await setup.gate.check(withToken())).toEqual({ kind: 'wrong_console_type', consoleType: 'spice-html5' });
  });

  it("refuses a foreign origin with Nova's reason, logged with the fingerprint", async () => {
    const setup = setUp();
    storedRows(setup, row());
    expect(await setup.gate.check(withToken({ origin: 'https://evil.example' }))).toEqual({
      kind: 'forbidden_origin',
      reason: 'Origin header does not match this host',
    });
    expect(logged).toContainEqual([
      { fingerprint: FINGERPRINT, reason: 'Origin header does not match this host' },
      'refused a websocket origin',
    ]);
  });

  it('grants a database token and queues its session row', async () => {
    const setup = setUp();
    storedRows(setup, row());
    setup.recorder.record.mockResolvedValue(undefined);
    const grant = await setup.gate.check(withToken());
    expect(grant).toEqual({
      kind: 'grant',
      id: expect.stringMatching(/^[0-9a-f-]{36}$/),
      tokenId: 7,
      tokenSource: 'database',
      tokenFingerprint: FINGERPRINT,
      instanceUuid: INSTANCE,
      consoleType: 'novnc',
      host: '192.0.2.10',
      port: 5900,
      proxyInstance: 'proxy-1',
      clientAddress: '198.51.100.7',
      internalAccessPath: null,
      expires: NOW_SECONDS + 600,
      route: null,
      via: { kind: 'direct' },
    });
    expect(setup.recorder.record).toHaveBeenCalledWith(grant);
    expect(setup.cell.sessions.insertExclusive).not.toHaveBeenCalled();
    expect(JSON.stringify(grant)).not.toContain(TOKEN);
  });

  it('refuses a token whose destination matches no route, logging its fingerprint, host and port, and claims nothing', async () => {
    const routes = parseRoutesFile(
      'routes:\n  - name: rack1\n    match: { cidr: 192.0.2.0/24, ports: "5900-5999" }\n    via: direct\n',
      'routes.yaml',
    );
    const setup = setUp({ routes: routing(routes) });
    storedRows(setup, row({ host: '192.0.2.10', port: 5432, consoleType: 'serial' }));
    expect(await setup.gate.check(withToken())).toEqual({ kind: 'unroutable' });
    expect(logged).toContainEqual([
      { fingerprint: FINGERPRINT, host: '192.0.2.10', port: 5432, source: 'database' },
      'refused: no route to the console',
    ]);
    expect(setup.cell.sessions.insertExclusive).not.toHaveBeenCalled();
    expect(setup.recorder.record).not.toHaveBeenCalled();
  });

  it('grants a routed destination with the route that reaches it', async () => {
    const routes = parseRoutesFile(
      'routes:\n  - name: rack1\n    match: { cidr: 192.0.2.0/24, ports: "5900-5999" }\n    via: direct\n',
      'routes.yaml',
    );
    const setup = setUp({ routes: routing(routes) });
    storedRows(setup, row());
    setup.recorder.record.mockResolvedValue(undefined);
    expect(await setup.gate.check(withToken())).toMatchObject({ kind: 'grant', route: 'rack1', via: { kind: 'direct' } });
  });

  it('claims an exclusive console on the connect path, and refuses it while another session holds it', async () => {
    const setup = setUp();
    storedRows(setup, row({ consoleType: 'serial' }));
    setup.cell.sessions.insertExclusive.mockResolvedValueOnce(null);
    const grant = await setup.gate.check(withToken());
    expect(grant).toMatchObject({ kind: 'grant', consoleType: 'serial' });
    expect(setup.cell.sessions.insertExclusive).toHaveBeenCalledWith(grant, 30_000);
    expect(setup.recorder.record).not.toHaveBeenCalled();

    setup.cell.sessions.insertExclusive.mockResolvedValueOnce('holder-session');
    expect(await setup.gate.check(withToken())).toEqual({ kind: 'console_busy', consoleType: 'serial', heldBy: 'holder-session' });
    expect(logged).toContainEqual([{ fingerprint: FINGERPRINT, heldBy: 'holder-session' }, 'refused: console in use']);

    setup.cell.sessions.insertExclusive.mockRejectedValueOnce(new Error('statement timeout'));
    expect(await setup.gate.check(withToken())).toEqual({ kind: 'unavailable' });
  });

  it("lets a reconnect to an exclusive console wait for its own session's end to be written", async () => {
    const setup = setUp();
    storedRows(setup, row({ consoleType: 'serial' }));
    setup.cell.sessions.insertExclusive.mockResolvedValue(null);
    let written!: () => void;
    setup.gate.releaseWhenWritten(
      { consoleType: 'serial', host: '192.0.2.10', port: 5900 },
      new Promise<void>((resolve) => (written = resolve)),
    );
    const reconnect = setup.gate.check(withToken());
    await new Promise((resolve) => setImmediate(resolve));
    expect(setup.cell.sessions.insertExclusive).not.toHaveBeenCalled();
    written();
    expect(await reconnect).toMatchObject({ kind: 'grant' });
    expect(setup.cell.sessions.insertExclusive).toHaveBeenCalledTimes(1);
  });

  it('serves a websockify token from the legacy store while the fallback is on', async () => {
    // Behind a TLS terminator the gate trusts (the request's peer).
    const setup = setUp({
      settings: {
        consoleTypes: ['novnc', 'serial'],
        allowedOrigins: [],
        trustedProxies: ['198.51.100.0/24'],
        sessionStaleMs: 30_000,
        connectTimeoutMs: 5_000,
      },
    });
    storedRows(setup);
    await turnFallbackOn(setup);
    setup.cell.tokens.isRevokedHash.mockResolvedValue(false);
    const authorization: LegacyAuthorization = {
      instanceUuid: null,
      consoleType: null,
      host: '192.0.2.20',
      port: 5901,
      internalAccessPath: null,
      accessUrlBase: null,
      expiresAt: null,
    };
    setup.legacy.lookup.mockResolvedValue(authorization);
    setup.legacyLookups.inc.mockReturnValue(undefined);
    setup.recorder.record.mockResolvedValue(undefined);
    // websockify's values have no access URL: the page must have come over this very scheme (the
    // terminator's X-Forwarded-Proto).
    const grant = await setup.gate.check(withToken({ 'x-forwarded-proto': 'https' }));
    expect(grant).toMatchObject({
      kind: 'grant',
      tokenId: null,
      tokenSource: 'legacy',
      tokenFingerprint: FINGERPRINT,
      instanceUuid: '00000000-0000-0000-0000-000000000000',
      consoleType: 'novnc',
      host: '192.0.2.20',
      port: 5901,
      expires: Number.MAX_SAFE_INTEGER,
    });
    expect(setup.cell.tokens.isRevokedHash).toHaveBeenCalledWith(TOKEN_HASH, NOW_SECONDS);
    expect(setup.legacy.lookup).toHaveBeenCalledWith(TOKEN);
    expect(setup.legacyLookups.inc).toHaveBeenCalledWith({ result: 'served' });
  });

  it('never serves a token revoked in keyhole from the legacy store, and fails closed when the store cannot answer', async () => {
    const setup = setUp();
    storedRows(setup);
    await turnFallbackOn(setup);
    setup.cell.tokens.isRevokedHash.mockResolvedValueOnce(true);
    expect(await setup.gate.check(withToken())).toEqual({ kind: 'invalid_token' });
    expect(setup.legacy.lookup).not.toHaveBeenCalled();

    setup.cell.tokens.isRevokedHash.mockResolvedValue(false);
    setup.legacy.lookup.mockResolvedValueOnce(null);
    setup.legacyLookups.inc.mockReturnValue(undefined);
    expect(await setup.gate.check(withToken())).toEqual({ kind: 'invalid_token' });
    expect(setup.legacyLookups.inc).toHaveBeenLastCalledWith({ result: 'miss' });

    setup.legacy.lookup.mockRejectedValueOnce(new Error('redis timeout'));
    expect(await setup.gate.check(withToken())).toEqual({ kind: 'unavailable' });
    expect(setup.legacyLookups.inc).toHaveBeenLastCalledWith({ result: 'unavailable' });
  });

  it('logs each refused token at debug level by its fingerprint only when asked, and counts them all in the summary', async () => {
    const setup = setUp({ logEachRefusal: true });
    storedRows(setup);
    await setup.gate.check(withToken());
    await setup.gate.check(request('/?token=' + 'x'.repeat(300)));
    expect(logged).toEqual([
      [{ fingerprint: FINGERPRINT, client: '198.51.100.7' }, 'refused an invalid or expired token'],
      [{ fingerprint: null, client: '198.51.100.7' }, 'refused an invalid or expired token'],
    ]);
    setup.gate.stop();
    expect(logged[2]).toEqual([{ instance: 'proxy-1', refused: 2, intervalMs: 10_000 }, 'refused invalid or expired tokens']);

    const quiet = setUp();
    storedRows(quiet);
    await quiet.gate.check(withToken());
    expect(logged).toHaveLength(3);
  });
});

describe('the refusal table', () => {
  const cases: { refusal: Refusal; status: number; message: string; metric: string }[] = [
    { refusal: { kind: 'draining' }, status: 503, message: 'proxy is shutting down', metric: 'draining' },
    { refusal: { kind: 'no_token' }, status: 401, message: 'a console token is required', metric: 'no_token' },
    { refusal: { kind: 'invalid_token' }, status: 401, message: 'invalid or expired token', metric: 'invalid_token' },
    {
      refusal: { kind: 'wrong_console_type', consoleType: 'spice-html5' },
      status: 404,
      message: 'this proxy does not serve spice-html5 consoles',
      metric: 'wrong_console_type',
    },
    {
      refusal: { kind: 'forbidden_origin', reason: 'Origin header not valid' },
      status: 403,
      message: 'Origin header not valid',
      metric: 'forbidden_origin',
    },
    {
      refusal: { kind: 'console_busy', consoleType: 'serial', heldBy: 'session-1' },
      status: 409,
      message: 'console busy: another session (session-1) is connected to this serial port',
      metric: 'console_busy',
    },
    {
      refusal: { kind: 'unroutable' },
      status: 403,
      message: 'console destination is not routable from this proxy',
      metric: 'unroutable',
    },
    { refusal: { kind: 'unavailable' }, status: 503, message: 'console authorization is unavailable', metric: 'unavailable' },
    {
      refusal: { kind: 'invalid_handshake' },
      status: 400,
      message: 'not a valid websocket handshake (GET, Upgrade: websocket, a Sec-WebSocket-Key, Sec-WebSocket-Version: 13)',
      metric: 'invalid_handshake',
    },
    {
      refusal: { kind: 'unsupported_subprotocol' },
      status: 400,
      message: 'this proxy speaks only the "binary" websocket subprotocol: offer "binary", or no subprotocol ("base64" is not supported)',
      metric: 'unsupported_subprotocol',
    },
    { refusal: { kind: 'internal_error' }, status: 500, message: 'internal error', metric: 'unavailable' },
  ];

  it('covers every refusal kind', () => {
    expect(cases.map((entry) => entry.refusal.kind).sort()).toEqual((Object.keys(REFUSALS) as RefusalKind[]).sort());
  });

  it.each(cases)(
    'answers $refusal.kind with $status, its JSON code and message, and its metric label',
    ({ refusal, status, message, metric }) => {
      const socket = { writable: true, end: strictFn('socket.end'), once: strictFn('socket.once'), destroy: strictFn('socket.destroy') };
      socket.end.mockReturnValue(socket);
      socket.once.mockReturnValue(socket);
      expect(refuseUpgrade(socket as unknown as Duplex, refusal)).toBe(metric);
      const [response] = socket.end.mock.calls[0] as [string];
      const [head, body] = response.split('\r\n\r\n');
      expect(head.split('\r\n')[0]).toMatch(new RegExp(`^HTTP/1\\.1 ${status} \\S`));
      expect(head).toContain(`Content-Length: ${Buffer.byteLength(body)}`);
      expect(head).toContain('Content-Type: application/json; charset=utf-8');
      expect(head).toContain('Cache-Control: no-store');
      expect(head).toContain('X-Content-Type-Options: nosniff');
      expect(JSON.parse(body)).toEqual({ code: refusal.kind.toUpperCase(), message });
      expect(socket.once).toHaveBeenCalledWith('finish', expect.any(Function));
    },
  );

  it('destroys a socket it can no longer write to', () => {
    const socket = { writable: false, destroy: jest.fn() };
    expect(refuseUpgrade(socket as unknown as Duplex, { kind: 'no_token' })).toBe('no_token');
    expect(socket.destroy).toHaveBeenCalled();
  });
});
