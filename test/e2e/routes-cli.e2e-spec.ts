import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

/*
 * `keyhole routes check` and `keyhole routes which`, run from the build as an operator types them:
 * no database, no running service, only the routes file (npm run build first).
 */

const MAIN = path.resolve(__dirname, '../../dist/apps/cli/src/main.js');

const GOOD = `routes:
  - name: rack1
    match: { cidr: 169.254.10.0/24, ports: "5900-5999,10000-20000" }
    via: direct
  - name: console-host
    match: { host: console.example.net }
    via: direct
  - name: v6
    match: { cidr: "fd00::/64", ports: 5900 }
    via: direct
`;

let dir: string;
let good: string;
let bad: string;

function keyhole(args: string[], environment: Record<string, string> = {}): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    // Only PATH: the commands need no KEYHOLE_DATABASE_URL.
    execFile(process.execPath, [MAIN, ...args], { env: { PATH: process.env.PATH, ...environment } }, (error, stdout, stderr) => {
      resolve({ code: error ? Number(error.code) : 0, out: stdout, err: stderr });
    });
  });
}

beforeAll(async () => {
  if (!existsSync(MAIN)) {
    throw new Error(`${MAIN} is missing: run "npm run build" first`);
  }
  dir = await mkdtemp(path.join(os.tmpdir(), 'keyhole-routes-cli-'));
  good = path.join(dir, 'routes.yaml');
  bad = path.join(dir, 'bad.yaml');
  await writeFile(good, GOOD);
  await writeFile(
    bad,
    GOOD.replace('ports: 5900 }', 'ports: "5900-" }').replace(
      '    match: { host: console.example.net }\n    via: direct',
      '    match: { host: console.example.net }\n    via: { connector: mgmt.sock }',
    ),
  );
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('keyhole routes check', () => {
  it('prints the table of a good file and exits 0', async () => {
    expect(await keyhole(['routes', 'check', good])).toEqual({
      code: 0,
      out: [
        'NAME          MATCH                     PORTS                  VIA',
        'rack1         cidr 169.254.10.0/24      5900-5999,10000-20000  direct',
        'console-host  host console.example.net  all                    direct',
        'v6            cidr fd00::/64            5900                   direct',
        '',
      ].join('\n'),
      err: '',
    });
  });

  it('prints every problem of a bad file with its line and field, and exits 1', async () => {
    const checked = await keyhole(['routes', 'check', bad]);
    expect(checked.code).toBe(1);
    expect(checked.out).toBe('');
    expect(checked.err).toContain(`${bad}:7: routes[1].via: connector: must be the absolute path of a UNIX socket`);
    expect(checked.err).toContain(`${bad}:9: routes[2].match.ports: "5900-" is not a port range`);
  });

  it('names a file it cannot read, and a wrong call exits 2 with the usage', async () => {
    expect(await keyhole(['routes', 'check', path.join(dir, 'missing.yaml')])).toMatchObject({
      code: 1,
      err: expect.stringContaining('missing.yaml: cannot be read (ENOENT)'),
    });
    expect(await keyhole(['routes', 'check'])).toMatchObject({ code: 2, err: expect.stringContaining('usage: keyhole routes check FILE') });
  });
});

describe('keyhole routes which', () => {
  it('says which route a destination takes, first match first', async () => {
    expect(await keyhole(['routes', 'which', '169.254.10.7', '5901', '--file', good])).toEqual({
      code: 0,
      out: `169.254.10.7:5901: route rack1 (${good}:2): cidr 169.254.10.0/24, ports 5900-5999,10000-20000, via direct\n`,
      err: '',
    });
    expect((await keyhole(['routes', 'which', 'CONSOLE.example.net', '22', '--file', good])).out).toContain('route console-host');
    // The default file is KEYHOLE_ROUTES_FILE.
    expect((await keyhole(['routes', 'which', 'fd00::9', '5900'], { KEYHOLE_ROUTES_FILE: good })).out).toContain('route v6');
  });

  it('exits 1 when no route takes it', async () => {
    expect(await keyhole(['routes', 'which', '127.0.0.1', '5432', '--file', good])).toEqual({
      code: 1,
      out: '127.0.0.1:5432: no route (the proxies refuse to dial it and the token API issues no token for it)\n',
      err: '',
    });
    expect((await keyhole(['routes', 'which', 'localhost', '5900', '--file', good])).code).toBe(1);
  });

  it('refuses a bad file, a bad port, and a call without a file', async () => {
    expect(await keyhole(['routes', 'which', '169.254.10.7', '5901', '--file', bad])).toMatchObject({
      code: 1,
      err: expect.stringContaining('is not a port range'),
    });
    expect(await keyhole(['routes', 'which', '169.254.10.7', '70000', '--file', good])).toMatchObject({
      code: 2,
      err: expect.stringContaining('PORT: must be between 1 and 65535'),
    });
    expect(await keyhole(['routes', 'which', '169.254.10.7', '5901'])).toMatchObject({
      code: 2,
      err: expect.stringContaining('give --file FILE or set KEYHOLE_ROUTES_FILE'),
    });
  });
});
