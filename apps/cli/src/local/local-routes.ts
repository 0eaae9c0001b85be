import { formatPortRanges, PortRange, withoutPorts } from '@keyhole/upstream';

/**
 * The console ports `keyhole local` lets its proxies dial on this machine: VNC displays
 * (5900-5999, QEMU's `-vnc :N`) and serial ports served over TCP (10000-20000), the ports the
 * README's walkthrough and the tests use.
 */
export const LOCAL_CONSOLE_PORTS: readonly PortRange[] = [
  { from: 5900, to: 5999 },
  { from: 10_000, to: 20_000 },
];

/**
 * The routes file of a local deployment: loopback consoles only (127.0.0.0/8 and ::1) on the
 * console ports, minus the deployment's own ports (token API, proxies, PostgreSQL), which a token
 * must never be able to point a proxy at. An own port inside a console range (`--api-port 17880`)
 * splits the range around it; the file has no `deny` rules, so what it lists is all that is allowed.
 */
export function localRoutesFile(ownPorts: Iterable<number>): string {
  const own = [...new Set(ownPorts)].sort((a, b) => a - b);
  const ports = formatPortRanges(withoutPorts(LOCAL_CONSOLE_PORTS, own));
  return [
    '# Written by `keyhole local` at every start (edits are lost): consoles on this machine only.',
    `# VNC 5900-5999 and serial 10000-20000, except this deployment's own ports (${own.join(', ')}).`,
    '# First match wins; a destination that matches no route is refused by the API and the proxies.',
    'routes:',
    '  - name: loopback-ipv4',
    `    match: { cidr: 127.0.0.0/8, ports: "${ports}" }`,
    '    via: direct',
    '  - name: loopback-ipv6',
    `    match: { cidr: "::1/128", ports: "${ports}" }`,
    '    via: direct',
    '',
  ].join('\n');
}
