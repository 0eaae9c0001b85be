import { generateKeyPairSync } from 'node:crypto';
import { inspect } from 'node:util';
import { describeRoute, parseRoutesFile, RoutesFileError, SshNodePool } from './index';

/** The problems a routes file is refused with (the test fails if it is accepted). */
function problemsOf(text: string, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    // With a node pool, as a proxy loads it: the keys of ssh routes are read.
    parseRoutesFile(text, 'routes.yaml', { env, sshNodes: new SshNodePool() });
  } catch (error) {
    if (error instanceof RoutesFileError) {
      return error.problems;
    }
    throw error;
  }
  throw new Error('the routes file was accepted');
}

const GOOD = `# first match wins
routes:
  - name: rack1
    match: { cidr: 169.254.10.0/24, ports: "5900-5999,10000-20000" }
    via: direct
  - name: console-host
    match:
      host: Console.Example.NET
    via: direct
  - name: v6-rack
    match: { cidr: "fd00:10::/64", ports: 5900 }
    via: direct
  - name: rack1-ssh
    match: { cidr: 169.254.10.0/24, ports: [22, "2222-2223"] }
    via: direct
`;

describe('routes file', () => {
  it('reads a good file: each route with its name, match, ports, via and line', () => {
    const routes = parseRoutesFile(GOOD, 'routes.yaml');
    expect(routes.list.map(describeRoute)).toEqual([
      { name: 'rack1', match: 'cidr 169.254.10.0/24', ports: '5900-5999,10000-20000', via: 'direct' },
      { name: 'console-host', match: 'host console.example.net', ports: 'all', via: 'direct' },
      { name: 'v6-rack', match: 'cidr fd00:10::/64', ports: '5900', via: 'direct' },
      { name: 'rack1-ssh', match: 'cidr 169.254.10.0/24', ports: '22,2222-2223', via: 'direct' },
    ]);
    expect(routes.list.map((route) => route.line)).toEqual([3, 6, 10, 13]);
  });

  it('reads a connector route: the UNIX socket of the connector that dials its consoles', () => {
    const routes = parseRoutesFile(
      'routes:\n  - name: mgmt\n    match: { cidr: 169.254.40.0/24 }\n    via: { connector: /run/keyhole/mgmt.sock }\n',
      'routes.yaml',
    );
    expect(routes.match('169.254.40.5', 5900)?.via).toEqual({ kind: 'connector', socket: '/run/keyhole/mgmt.sock' });
    expect(describeRoute(routes.list[0]).via).toBe('connector /run/keyhole/mgmt.sock');
  });

  it('accepts an empty table: nothing is routable', () => {
    const routes = parseRoutesFile('routes: []\n', 'routes.yaml');
    expect(routes.size).toBe(0);
    expect(routes.match('127.0.0.1', 5900)).toBeUndefined();
  });

  describe('matching', () => {
    const routes = parseRoutesFile(GOOD, 'routes.yaml');
    const which = (host: string, port: number) => routes.match(host, port)?.name;

    it('matches an IPv4 address by CIDR and port ranges, both ends included', () => {
      expect(which('169.254.10.7', 5900)).toBe('rack1');
      expect(which('169.254.10.7', 5999)).toBe('rack1');
      expect(which('169.254.10.7', 20000)).toBe('rack1');
      expect(which('169.254.10.7', 6000)).toBeUndefined();
      expect(which('169.254.11.7', 5900)).toBeUndefined();
    });

    it('takes the first route that matches', () => {
      const overlapping = parseRoutesFile(
        'routes:\n' +
          '  - { name: narrow, match: { cidr: 169.254.10.5/32, ports: "5900" }, via: direct }\n' +
          '  - { name: wide, match: { cidr: 169.254.0.0/16 }, via: direct }\n',
        'routes.yaml',
      );
      expect(overlapping.match('169.254.10.5', 5900)?.name).toBe('narrow');
      expect(overlapping.match('169.254.10.5', 5901)?.name).toBe('wide');
      expect(overlapping.match('169.254.10.6', 5900)?.name).toBe('wide');
      // The later route of the same network is reached by the ports the first does not take.
      expect(which('169.254.10.7', 22)).toBe('rack1-ssh');
      expect(which('169.254.10.7', 2223)).toBe('rack1-ssh');
    });

    it('matches IPv6 addresses by IPv6 CIDR, in any spelling', () => {
      expect(which('fd00:10::7', 5900)).toBe('v6-rack');
      expect(which('FD00:0010:0000:0000:0000:0000:0000:0007', 5900)).toBe('v6-rack');
      expect(which('fd00:11::7', 5900)).toBeUndefined();
      expect(which('fd00:10::7', 5901)).toBeUndefined();
    });

    it('matches an IPv4-mapped IPv6 address as the IPv4 address it dials, and never by an IPv6 network', () => {
      expect(which('::ffff:169.254.10.7', 5900)).toBe('rack1');
      expect(which('::ffff:a9fe:a07', 5900)).toBe('rack1');
      const everyV6 = parseRoutesFile('routes:\n  - { name: all6, match: { cidr: "::/0" }, via: direct }\n', 'routes.yaml');
      expect(everyV6.match('::ffff:127.0.0.1', 5432)).toBeUndefined();
      expect(everyV6.match('127.0.0.1', 5432)).toBeUndefined();
      expect(everyV6.match('::1', 5432)?.name).toBe('all6');
    });

    it('matches a host name only by a host route, exactly and case-insensitively, and never by a CIDR', () => {
      expect(which('console.example.net', 1234)).toBe('console-host');
      expect(which('CONSOLE.example.net', 1234)).toBe('console-host');
      expect(which('other.console.example.net', 1234)).toBeUndefined();
      expect(which('example.net', 1234)).toBeUndefined();
      // localhost resolves into 127.0.0.0/8, but no DNS decides routing.
      const loopback = parseRoutesFile('routes:\n  - { name: lo, match: { cidr: 127.0.0.0/8 }, via: direct }\n', 'routes.yaml');
      expect(loopback.match('localhost', 5900)).toBeUndefined();
      expect(loopback.match('127.1', 5900)).toBeUndefined();
      expect(loopback.match('127.0.0.1', 5900)?.name).toBe('lo');
    });
  });

  describe('refuses, naming the line and the field', () => {
    it('a port range that is not one', () => {
      const text = GOOD.replace('ports: 5900 }', 'ports: "5900-" }');
      expect(problemsOf(text)).toEqual(['routes.yaml:11: routes[2].match.ports: "5900-" is not a port range']);
      expect(problemsOf(GOOD.replace('"5900-5999,', '"5999-5900,'))).toEqual([
        'routes.yaml:4: routes[0].match.ports: "5999-5900" is not a port range: it ends before it starts',
      ]);
      expect(problemsOf(GOOD.replace('ports: 5900 }', 'ports: 70000 }'))).toEqual([
        'routes.yaml:11: routes[2].match.ports: "70000" is not a port range: ports are 1-65535',
      ]);
    });

    it('a CIDR that is not one, and a host that is an address or no host name', () => {
      expect(problemsOf(GOOD.replace('169.254.10.0/24, ports: "5900', '169.254.10.0/33, ports: "5900'))).toEqual([
        'routes.yaml:4: routes[0].match.cidr: "169.254.10.0/33" is not an IPv4 or IPv6 CIDR (such as 169.254.10.0/24 or fd00::/64)',
      ]);
      expect(problemsOf(GOOD.replace('"fd00:10::/64"', 'rack7'))).toEqual([
        'routes.yaml:11: routes[2].match.cidr: "rack7" is not an IPv4 or IPv6 CIDR (such as 169.254.10.0/24 or fd00::/64)',
      ]);
      expect(problemsOf(GOOD.replace('host: Console.Example.NET', 'host: 169.254.10.9'))).toEqual([
        'routes.yaml:8: routes[1].match.host: "169.254.10.9" is an IP address: match it with cidr',
      ]);
      expect(problemsOf(GOOD.replace('host: Console.Example.NET', 'host: "*.example.net"'))).toEqual([
        'routes.yaml:8: routes[1].match.host: "*.example.net" is not a host name',
      ]);
    });

    it('a match with both or neither of cidr and host', () => {
      expect(problemsOf(GOOD.replace('host: Console.Example.NET', 'host: console.example.net\n      cidr: 169.254.1.0/24'))).toEqual([
        'routes.yaml:8: routes[1].match: needs exactly one of cidr and host',
      ]);
      expect(problemsOf(GOOD.replace('{ cidr: "fd00:10::/64", ports: 5900 }', '{ ports: 5900 }'))).toEqual([
        'routes.yaml:11: routes[2].match: needs exactly one of cidr and host',
      ]);
    });

    it('a missing or unknown field, a bad or repeated name, at its own line', () => {
      expect(problemsOf(GOOD.replace('    via: direct\n  - name: v6-rack', '  - name: v6-rack'))).toEqual([
        'routes.yaml:6: routes[1].via: required',
      ]);
      expect(problemsOf(GOOD.replace('      host: Console.Example.NET', '      host: Console.Example.NET\n      port: 5900'))).toEqual([
        'routes.yaml:9: routes[1].match.port: unknown field',
      ]);
      expect(problemsOf(GOOD.replace('name: v6-rack', 'name: V6_rack'))).toEqual([
        'routes.yaml:10: routes[2].name: lowercase letters, digits and inner dashes, at most 63',
      ]);
      expect(problemsOf(GOOD.replace('name: v6-rack', 'name: rack1'))).toEqual([
        'routes.yaml:10: routes[2].name: "rack1" is the name of an earlier route',
      ]);
      expect(problemsOf('route:\n  - name: a\n')).toEqual([
        'routes.yaml:1: routes: required',
        'routes.yaml:1: route: unknown field (the file has one key, routes)',
      ]);
    });

    it('a via of no known kind', () => {
      expect(problemsOf(GOOD.replace('via: direct', 'via: tunnel'))).toEqual([
        'routes.yaml:5: routes[0].via: must be direct, { ssh: {...} } or { connector: /path/of/its.sock }',
      ]);
    });

    it('a connector route whose socket is not an absolute path', () => {
      for (const socket of ['run/keyhole/mgmt.sock', '42', `/${'x'.repeat(120)}`]) {
        const connector = GOOD.replace(
          '    match:\n      host: Console.Example.NET\n    via: direct',
          `    match:\n      host: Console.Example.NET\n    via: { connector: ${socket} }`,
        );
        expect(problemsOf(connector)).toEqual([
          'routes.yaml:9: routes[1].via: connector: must be the absolute path of a UNIX socket (at most 107 bytes)',
        ]);
      }
    });

    it('YAML that does not parse, at its line', () => {
      expect(problemsOf('routes:\n  - name: a\n    match: { cidr: 169.254.1.0/24\n    via: direct\n')).toEqual([
        expect.stringMatching(/^routes\.yaml:4: Flow map .* end with a }$/),
      ]);
      expect(problemsOf('routes:\n  - name: a\n    name: b\n')).toEqual(['routes.yaml:3: Map keys must be unique']);
    });
  });
});

describe('ssh routes in the routes file', () => {
  // An RSA key in PEM (PKCS#1), which ssh2 reads like an OpenSSH one.
  const { privateKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    privateKeyEncoding: { type: 'pkcs1', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  const env = { KEYHOLE_SSH_KEY_TENANT7: privateKey };
  const keyBody = privateKey.split('\n')[1];
  const HOST_KEY = `SHA256:${'A'.repeat(43)}`;
  const SSH = `routes:
  - name: tenant-7
    match: { cidr: 169.254.20.0/24, ports: "5900-5999" }
    via:
      ssh:
        host: 169.254.30.2
        user: keyhole
        key: env:KEYHOLE_SSH_KEY_TENANT7
        hostKey: "${HOST_KEY}"
        mode: nc
        through: jump
  - name: jump
    match: { cidr: 169.254.30.0/24, ports: 22 }
    via: { ssh: { host: jump.example.net, port: 2222, user: keyhole, key: env:KEYHOLE_SSH_KEY_TENANT7, hostKey: "${HOST_KEY}" } }
`;

  it('reads them with defaults (port 22, mode forward) and prints them without the key', () => {
    const routes = parseRoutesFile(SSH, 'routes.yaml', { env, sshNodes: new SshNodePool() });
    expect(routes.list.map(describeRoute)).toEqual([
      { name: 'tenant-7', match: 'cidr 169.254.20.0/24', ports: '5900-5999', via: 'ssh keyhole@169.254.30.2:22 (nc, through jump)' },
      { name: 'jump', match: 'cidr 169.254.30.0/24', ports: '22', via: 'ssh keyhole@jump.example.net:2222 (forward)' },
    ]);
    expect(routes.match('169.254.20.9', 5901)?.name).toBe('tenant-7');
    // The key is in memory, and in nothing that can be printed.
    const printed = [
      JSON.stringify(routes.list),
      inspect(routes.list, { depth: 10 }),
      String(routes.list[0].via.kind === 'ssh' && routes.list[0].via.node.key),
    ];
    for (const text of printed) {
      expect(text).not.toContain(keyBody);
      expect(text).not.toContain('PRIVATE KEY');
    }
  });

  it('reads no key where nothing dials (the token API, a check): the key stays with the proxies', () => {
    const routes = parseRoutesFile(SSH, 'routes.yaml', { env: {} });
    expect(routes.list.map((route) => route.via.kind === 'ssh' && route.via.node.key)).toEqual([undefined, undefined]);
  });

  it('names the variable or file of a missing or unusable key, never its content', () => {
    expect(problemsOf(SSH, {})).toEqual([
      'routes.yaml:8: routes[0].via.ssh.key: environment variable KEYHOLE_SSH_KEY_TENANT7 is not set',
      'routes.yaml:14: routes[1].via.ssh.key: environment variable KEYHOLE_SSH_KEY_TENANT7 is not set',
    ]);
    expect(problemsOf(SSH.replace('key: env:KEYHOLE_SSH_KEY_TENANT7\n', 'key: file:/nonexistent/tenant7.key\n'), env)).toEqual([
      'routes.yaml:8: routes[0].via.ssh.key: file /nonexistent/tenant7.key cannot be read (ENOENT)',
    ]);
    const broken = problemsOf(SSH, { KEYHOLE_SSH_KEY_TENANT7: privateKey.replace(keyBody, keyBody.split('').reverse().join('')) });
    expect(broken[0]).toMatch(
      /^routes\.yaml:8: routes\[0\]\.via\.ssh\.key: environment variable KEYHOLE_SSH_KEY_TENANT7 is not an OpenSSH or PEM private key/,
    );
    expect(broken.join('\n')).not.toContain(keyBody.slice(0, 20));
  });

  it('reads an encrypted key with its passphrase, and says so when the passphrase is wrong', () => {
    const encrypted = generateKeyPairSync('rsa', {
      modulusLength: 2048,
      privateKeyEncoding: { type: 'pkcs1', format: 'pem', cipher: 'aes-256-cbc', passphrase: 'correct horse' },
      publicKeyEncoding: { type: 'spki', format: 'pem' },
    }).privateKey;
    const withPassphrase = SSH.replace(
      'key: env:KEYHOLE_SSH_KEY_TENANT7\n',
      'key: env:KEYHOLE_SSH_KEY_TENANT7\n        passphrase: env:KEYHOLE_SSH_PASSPHRASE\n',
    ).replace(
      'key: env:KEYHOLE_SSH_KEY_TENANT7, hostKey',
      'key: env:KEYHOLE_SSH_KEY_TENANT7, passphrase: env:KEYHOLE_SSH_PASSPHRASE, hostKey',
    );
    const routes = parseRoutesFile(withPassphrase, 'routes.yaml', {
      env: { KEYHOLE_SSH_KEY_TENANT7: encrypted, KEYHOLE_SSH_PASSPHRASE: 'correct horse' },
      sshNodes: new SshNodePool(),
    });
    expect(routes.list[0].via.kind === 'ssh' && routes.list[0].via.node.key !== undefined).toBe(true);
    const wrong = problemsOf(withPassphrase, { KEYHOLE_SSH_KEY_TENANT7: encrypted, KEYHOLE_SSH_PASSPHRASE: 'hunter2' });
    expect(wrong).toEqual([
      'routes.yaml:8: routes[0].via.ssh.key: environment variable KEYHOLE_SSH_KEY_TENANT7 is not an OpenSSH or PEM private key that can be used (or its passphrase is wrong or missing)',
      'routes.yaml:15: routes[1].via.ssh.key: environment variable KEYHOLE_SSH_KEY_TENANT7 is not an OpenSSH or PEM private key that can be used (or its passphrase is wrong or missing)',
    ]);
    expect(wrong.join('\n')).not.toContain('hunter2');
  });

  it('refuses bad fields at their line, and a through that is no ssh route or makes a cycle', () => {
    expect(problemsOf(SSH.replace(`hostKey: "${HOST_KEY}"\n        mode: nc`, 'hostKey: "MD5:aa"\n        mode: telnet'), env)).toEqual([
      'routes.yaml:9: routes[0].via.ssh.hostKey: must be a SHA256 host key fingerprint, as `ssh-keygen -lf` prints it (SHA256:...)',
      expect.stringMatching(/^routes\.yaml:10: routes\[0\]\.via\.ssh\.mode: /),
    ]);
    expect(problemsOf(SSH.replace('through: jump', 'through: nowhere'), env)).toEqual([
      'routes.yaml:11: routes[0].via.ssh.through: "nowhere" is not the name of a route',
    ]);
    const cycle = SSH.replace('port: 2222, user', 'port: 2222, through: tenant-7, user');
    expect(problemsOf(cycle, env)).toEqual([
      'routes.yaml:11: routes[0].via.ssh.through: the chain tenant-7 -> jump -> tenant-7 is a cycle',
      'routes.yaml:14: routes[1].via.ssh.through: the chain jump -> tenant-7 -> jump is a cycle',
    ]);
    const direct = `${SSH}  - name: plain\n    match: { cidr: 169.254.31.0/24 }\n    via: direct\n`.replace(
      'through: jump',
      'through: plain',
    );
    expect(problemsOf(direct, env)).toEqual(['routes.yaml:11: routes[0].via.ssh.through: "plain" is not an ssh route']);
    expect(problemsOf(SSH.replace('user: keyhole\n', 'user: keyhole\n        password: x\n'), env)).toEqual([
      'routes.yaml:8: routes[0].via.ssh.password: unknown field',
    ]);
  });
});
