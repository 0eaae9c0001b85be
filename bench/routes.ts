import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ManagedProcess, startProcess } from '../test/support/real/processes';
import { startSshd } from '../test/support/real/sshd';
import { waitUntil } from '../test/support/wait';
import type { Keyhole } from './deployments';
import { onCleanup } from './procs';
import type { Target } from './protocol';
import type { RouteSystemName } from './results';
import { listenerPid, startOpenSshForwards } from './openssh';

/** The consoles of the routes figure: the bench's TCP upstreams. */
export type RouteConsole = 'source' | 'sink' | 'banner';

/**
 * The environment variable that carries the ssh route's private key to the proxy (never a file,
 * never a log). Not KEYHOLE_SSH_KEY_BENCH: keyhole refuses to start with a KEYHOLE_* variable that
 * is not one of its settings (a misspelt setting must not fall back to its default silently).
 */
const SSH_KEY_VARIABLE = 'BENCH_SSH_KEY';

/**
 * The targets of the routes figure, each reaching the same consoles: a keyhole proxy per route
 * kind (`via-direct`, `via-ssh`, `via-connector`: the same build and settings, only the routes file
 * differs) and OpenSSH's own client through the same sshd (`openssh`, the anchor of the ssh route).
 */
export interface RouteTargets {
  /** What the load generator dials, per running target and console. */
  targets: Partial<Record<RouteSystemName, Record<RouteConsole, Target>>>;
  /** Targets that do not run, and why (a route kind this build refuses, a program that would not start). */
  unavailable: Partial<Record<RouteSystemName, string>>;
  /** The processes each target's CPU is counted over (with their descendants): its proxy or client, and its node. */
  processes: Partial<Record<RouteSystemName, number[]>>;
}

export interface RouteTargetsInput {
  keyhole: Keyhole;
  /** keyhole tokens for the consoles (issued for 127.0.0.1:PORT, valid on every proxy of the cell). */
  tokens: Record<RouteConsole, string>;
  consoles: Record<RouteConsole, { host: string; port: number }>;
  /** Where the routes files, the connector's socket and the logs go (removed at the end of the run). */
  workDir: string;
}

/** The first lines of what a failed command said, for a report. */
function failureOf(error: unknown): string {
  const stderr = (error as { stderr?: string }).stderr?.trim();
  const text = stderr || (error instanceof Error ? error.message : String(error));
  return text
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean)
    .slice(0, 3)
    .join(' ');
}

function routesFile(name: string, via: string[]): string {
  return ['routes:', `  - name: ${name}`, '    match: { cidr: 127.0.0.0/8 }', ...via.map((line) => `    ${line}`), ''].join('\n');
}

/** Starts every route target this build and machine can run; the others are reported with the reason. */
export async function startRouteTargets(input: RouteTargetsInput): Promise<RouteTargets> {
  const result: RouteTargets = { targets: {}, unavailable: {}, processes: {} };
  const { keyhole, workDir } = input;
  mkdirSync(workDir, { recursive: true });

  /**
   * A proxy of the cell with this routes file, once `keyhole routes check` accepted it and the
   * route's node (`startNode`: the connector) runs; its processes and the node's are the target's.
   */
  const routedProxy = async (
    system: RouteSystemName,
    file: string,
    content: string,
    options: { environment?: Record<string, string>; nodePids?: number[]; startNode?: () => Promise<number> } = {},
  ): Promise<void> => {
    const routes = path.join(workDir, file);
    writeFileSync(routes, content);
    try {
      // Without the route's secrets: only the proxy is given them.
      await keyhole.cli(['routes', 'check', routes]);
    } catch (error) {
      result.unavailable[system] = `not available in this build: keyhole routes check refuses it (${failureOf(error)})`;
      return;
    }
    const nodePids = [...(options.nodePids ?? []), ...(options.startNode ? [await options.startNode()] : [])];
    const proxy = await keyhole.startExtraProxy(`route proxy ${system}`, { KEYHOLE_ROUTES_FILE: routes, ...options.environment });
    const base = `127.0.0.1:${proxy.port}`;
    const target = (name: RouteConsole): Target => ({
      kind: 'ws',
      url: `ws://${base}/websockify?token={token}`,
      token: input.tokens[name],
      origin: `http://${base}`,
    });
    result.targets[system] = { source: target('source'), sink: target('sink'), banner: target('banner') };
    result.processes[system] = [proxy.process.pid, ...nodePids];
  };
  const attempt = async (systems: RouteSystemName[], start: () => Promise<void>): Promise<void> => {
    try {
      await start();
    } catch (error) {
      for (const system of systems) {
        if (!result.targets[system] && !result.unavailable[system]) {
          result.unavailable[system] = `could not start: ${failureOf(error)}`;
        }
      }
    }
  };

  await attempt(['via-direct'], () => routedProxy('via-direct', 'routes-direct.yaml', routesFile('bench-direct', ['via: direct'])));

  await attempt(['openssh', 'via-ssh'], async () => {
    // The test harness's sshd: its own host key and authorized client key (ssh-keygen, in a
    // temporary directory that destroy() removes), on 127.0.0.1.
    const sshd = await startSshd();
    onCleanup(() => sshd.destroy());
    const sshdPid = await listenerPid(sshd.port);
    const forwards = await startOpenSshForwards(sshd, input.consoles, 'banner', workDir);
    const forwarded = (name: RouteConsole): Target => ({ kind: 'tcp', host: '127.0.0.1', port: forwards.ports[name] });
    result.targets.openssh = { source: forwarded('source'), sink: forwarded('sink'), banner: forwarded('banner') };
    result.processes.openssh = [forwards.process.pid, sshdPid];
    await routedProxy(
      'via-ssh',
      'routes-ssh.yaml',
      routesFile('bench-ssh', [
        'via:',
        '  ssh:',
        `    host: ${sshd.host}`,
        `    port: ${sshd.port}`,
        `    user: ${sshd.user}`,
        `    key: env:${SSH_KEY_VARIABLE}`,
        `    hostKey: "${sshd.hostKeyFingerprint}"`,
        '    mode: forward',
      ]),
      { environment: { [SSH_KEY_VARIABLE]: sshd.clientPrivateKey }, nodePids: [sshdPid] },
    );
  });

  await attempt(['via-connector'], async () => {
    const socket = path.join(workDir, 'bench-connector.sock');
    await routedProxy('via-connector', 'routes-connector.yaml', routesFile('bench-connector', [`via: { connector: ${socket} }`]), {
      startNode: async () => {
        // What the connector may dial: the consoles, directly from its side.
        const mapping = path.join(workDir, 'connector-routes.yaml');
        writeFileSync(mapping, routesFile('bench-consoles', ['via: direct']));
        return (await startConnector(keyhole, socket, mapping, path.join(workDir, 'connector.log'))).pid;
      },
    });
  });
  return result;
}

/** `keyhole connector serve` on a UNIX socket; resolves once the socket exists. */
async function startConnector(keyhole: Keyhole, socket: string, mapping: string, logFile: string): Promise<ManagedProcess> {
  const connector = await startProcess(
    process.execPath,
    [keyhole.cliMain, 'connector', 'serve', '--name', 'bench', '--socket', socket, '--routes', mapping],
    { name: 'connector', logFile, env: { PATH: process.env.PATH, HOME: process.env.HOME, KEYHOLE_LOG_LEVEL: 'info' } },
  );
  onCleanup(() => connector.stop(3_000));
  await waitUntil(
    () => {
      if (connector.hasExited()) {
        throw new Error(`keyhole connector serve exited: ${connector.output()}`);
      }
      return existsSync(socket) ? true : undefined;
    },
    15_000,
    () => `the connector's socket ${socket}:\n${connector.output()}`,
    { intervalMs: 50 },
  );
  return connector;
}
