import { ConsoleAuthTokenEntity } from '@keyhole/db';
import { sha256Hex } from '@keyhole/core';
import { buildAccessUrl, ConsoleAuthToken, OBJECT_VERSIONS } from './console-auth-token.object';

const TOKEN = 'Zm9vYmFyLWJhei1xdXV4LTAxMjM0NTY3ODktYWJjZGVm';

function row(overrides: Partial<ConsoleAuthTokenEntity> = {}): ConsoleAuthTokenEntity {
  return Object.assign(new ConsoleAuthTokenEntity(), {
    id: 123,
    tokenHash: sha256Hex(TOKEN),
    consoleType: 'novnc',
    host: 'fake-host',
    port: 5900,
    tlsPort: 5901,
    internalAccessPath: 'fake-path',
    instanceUuid: '3f2c1a9e-8d7b-4c6a-9e5f-1a2b3c4d5e6f',
    expires: 100,
    accessUrlBase: 'http://fake.url.fake/root.html',
    createdAt: new Date('2026-01-01T00:00:00Z'),
    updatedAt: null,
    objectVersion: '1.4',
    issuedBy: '0123456789abcdef',
    ...overrides,
  });
}

describe('access URL (Nova conventions)', () => {
  it('gives noVNC the websocket path with the token inside it', () => {
    expect(buildAccessUrl('novnc', 'http://fake.url.fake/root.html', TOKEN)).toBe(
      `http://fake.url.fake/root.html?path=websockify%3Ftoken%3D${TOKEN}`,
    );
  });

  it("appends to the base's own path parameter, like Nova", () => {
    const url = new URL(buildAccessUrl('novnc', 'http://fake.url.fake/novnc/root.html?path=novnc', TOKEN)!);
    expect(url.searchParams.get('path')).toBe(`novnc?token=${TOKEN}`);
    expect(url.pathname).toBe('/novnc/root.html');
  });

  it("keeps the base's other query parameters", () => {
    const url = buildAccessUrl('novnc', 'http://fake.url.fake/root.html?noop=true', TOKEN)!;
    expect(url).toBe(`http://fake.url.fake/root.html?noop=true&path=websockify%3Ftoken%3D${TOKEN}`);
  });

  it.each(['serial', 'spice-html5'])('gives %s BASE?token=TOKEN', (type) => {
    expect(buildAccessUrl(type, 'ws://127.0.0.1:6083/', TOKEN)).toBe(`ws://127.0.0.1:6083/?token=${TOKEN}`);
    expect(buildAccessUrl(type, 'http://h/spice_auto.html?lang=en', TOKEN)).toBe(`http://h/spice_auto.html?lang=en&token=${TOKEN}`);
  });

  it('has no URL without a token or a base (a listed token has no plaintext)', () => {
    expect(ConsoleAuthToken.fromRow('cell1', row()).accessUrl).toBeNull();
    expect(ConsoleAuthToken.fromRow('cell1', row({ accessUrlBase: null }), TOKEN).accessUrl).toBeNull();
  });
});

describe('object versions', () => {
  const token = ConsoleAuthToken.fromRow('cell1', row());

  it('shows every field at the current version, and never the token or its hash', () => {
    const primitive = token.toPrimitive();
    expect(primitive).toMatchObject({
      objectVersion: '1.4',
      id: 123,
      expires: 100,
      expiresAt: '1970-01-01T00:01:40.000Z',
      tlsPort: 5901,
      issuedBy: '0123456789abcdef',
      fingerprint: sha256Hex(TOKEN).slice(0, 12),
    });
    expect(JSON.stringify(primitive)).not.toContain(TOKEN);
    expect(JSON.stringify(primitive)).not.toContain(sha256Hex(TOKEN));
  });

  it.each([
    ['1.0', []],
    ['1.1', []],
    ['1.2', ['expires', 'expiresAt']],
    ['1.3', ['expires', 'expiresAt', 'tlsPort']],
    ['1.4', ['expires', 'expiresAt', 'tlsPort', 'issuedBy', 'fingerprint']],
  ] as const)('at %s has exactly the later fields %j', (version, later) => {
    const primitive = token.toPrimitive(version);
    const laterFields = ['expires', 'expiresAt', 'tlsPort', 'issuedBy', 'fingerprint'];
    expect(laterFields.filter((field) => field in primitive)).toEqual(later);
    expect(primitive).toMatchObject({ objectVersion: version, id: 123, host: 'fake-host', port: 5900, internalAccessPath: 'fake-path' });
  });

  it('lists Nova versions before keyhole ones', () => {
    expect(OBJECT_VERSIONS).toEqual(['1.0', '1.1', '1.2', '1.3', '1.4']);
  });
});
