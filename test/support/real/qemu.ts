import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitUntil } from '../wait';
import { closeSocket, connectTcp, freePort, readFirstBytes } from './network';
import { probeTcp } from './netns';
import { failOnExit, findOnPath, ManagedProcess, startProcess } from './processes';

/**
 * A diskless QEMU guest for console tests: SeaBIOS on a std VGA (served over VNC) with its text
 * mirrored on the first serial port (served as a TCP server).
 *
 * Serial output written while no client is attached is lost (QEMU's tcp chardev with wait=off), and
 * the chardev serves one client at a time. So: connect first (`connectSerial()`, or connect through
 * the proxy under test and `waitForSerialClient()`), then `reset()` (or `resume()` when started
 * paused) to make the BIOS print again.
 *
 * A started VM (unless paused) has finished its first boot and idles at "No bootable device.", so
 * nothing more comes on serial until a reset. The harness knows this from SeaBIOS's debug log (I/O
 * port 0x402, to a file); `reset()` uses it too, see there why.
 */
export interface QemuVm {
  /** Where VNC and the serial port listen: 127.0.0.1, or `listen.address` inside `listen.namespace`. */
  readonly host: string;
  /** TCP port of QEMU's VNC server (RFB 3.8; no authentication, or VeNCrypt x509 with `vncTls`) on `host`. */
  readonly vncPort: number;
  /** TCP port of the guest's first serial port (a raw TCP server) on `host`. */
  readonly serialPort: number;
  readonly pid: number;
  /** The full command line, for error messages. */
  readonly commandLine: string;
  /** QEMU's stdout and stderr so far. */
  output(): string;
  /** SeaBIOS's debug log so far (every boot), for diagnostics. */
  firmwareLog(): string;
  /**
   * Hard-resets the guest (QMP `system_reset`): SeaBIOS prints its banner on serial and VGA again.
   *
   * Waits first until the boot in progress (after `resume()` or an earlier reset) has settled at "No
   * bootable device.", unless the CPU has never run: a reset while SeaBIOS copies itself into shadow
   * RAM, ~15-35 ms within its first ~200 ms, wedges the guest for good (QEMU's reset does not map the
   * BIOS area back to ROM, so the CPU restarts in a half-copied BIOS, and so does every later
   * reset). Fails after `timeoutMs` (default 10 000) if that boot does not settle.
   */
  reset(options?: { timeoutMs?: number }): Promise<void>;
  /** Starts the guest's CPU (QMP `cont`) when it was started with `paused: true`. */
  resume(): Promise<void>;
  /**
   * Resolves once QEMU has accepted a client on the serial port (optionally the one whose local port
   * is `localPort`), as reported by QMP `query-chardev`. Connecting is not enough: QEMU accepts from
   * its listen backlog asynchronously, and output written before that is lost.
   */
  waitForSerialClient(options?: { localPort?: number; timeoutMs?: number }): Promise<void>;
  /**
   * Connects to the serial port and resolves once QEMU has accepted this connection. From this
   * process's namespace: not for a VM started with `listen` (reach it through what the test proves).
   */
  connectSerial(timeoutMs?: number): Promise<SerialConsole>;
  /** SIGTERM, SIGKILL after 5 s, waits for exit, removes the temporary directory. Idempotent. */
  stop(): Promise<void>;
}

export interface QemuVmOptions {
  /** Bound on the whole start (process, VNC banner, serial port, QMP). Default 30 000 ms. */
  timeoutMs?: number;
  /** Start with the CPU stopped (`-S`) until `resume()`. Default false. */
  paused?: boolean;
  /**
   * Accelerator. Default 'tcg': SeaBIOS needs no speed, TCG works everywhere, and on the nested-KVM
   * machines we run on it reached the BIOS banner in ~0.1 s against ~0.75 s with KVM.
   */
  accel?: 'tcg' | 'kvm';
  /**
   * Run QEMU inside this network namespace (`ip netns exec`), VNC and serial listening on `address`
   * there (an address of one of its veths). The readiness probes then run inside it too. Default:
   * this process's namespace, 127.0.0.1.
   */
  listen?: { namespace: string; address: string };
  /**
   * Serve VNC with VeNCrypt x509 (`-object tls-creds-x509,...` and `-vnc ...,tls-creds=`): `directory`
   * holds ca-cert.pem, server-cert.pem and server-key.pem, as QEMU expects them. `verifyPeer`
   * (default true) makes QEMU require a client certificate signed by that CA. Default: plain VNC.
   */
  vncTls?: { directory: string; verifyPeer?: boolean };
}

const QEMU_BINARY = 'qemu-system-x86_64';
/** SeaBIOS's 'etc/sercon-port' is read as a little-endian integer: the I/O port of COM1. */
const SERCON_PORT = Buffer.from([0xf8, 0x03]);
const SERIAL_CHARDEV_ID = 'serial0';
const RFB_BANNER = 'RFB 003.008\n';
/** SeaBIOS's last line when it has finished starting and found nothing to boot; it then idles for ever. */
const FIRMWARE_SETTLED = 'No bootable device.';

export function isQemuAvailable(): boolean {
  return findOnPath(QEMU_BINARY) !== undefined;
}

/**
 * Starts a VM and waits until VNC sends its RFB banner, the serial port accepts, QMP answers, and
 * (unless paused) the firmware has settled.
 */
export async function startQemuVm(options: QemuVmOptions = {}): Promise<QemuVm> {
  if (!isQemuAvailable()) {
    throw new Error(`${QEMU_BINARY} is not on PATH: install it (Debian: apt-get install -y qemu-system-x86)`);
  }
  const timeoutMs = options.timeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  // Free ports are picked by binding port 0 and releasing it, so another process can take one before
  // QEMU binds it: retry with new ports when that is why QEMU failed.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(options, deadline);
    } catch (error) {
      const portTaken = error instanceof Error && /Address already in use/i.test(error.message);
      if (!portTaken || attempt >= 3 || Date.now() >= deadline) {
        throw error;
      }
    }
  }
}

async function startOnce(options: QemuVmOptions, deadline: number): Promise<QemuVm> {
  const directory = mkdtempSync(join(tmpdir(), 'keyhole-qemu-'));
  const serconFile = join(directory, 'sercon-port');
  const qmpPath = join(directory, 'qmp.sock');
  const firmwareLogPath = join(directory, 'firmware.log');
  writeFileSync(serconFile, SERCON_PORT);

  let vncPort = await freePort();
  // VNC is addressed by display number (TCP port 5900 + N); ephemeral ports are far above 5900.
  while (vncPort <= 5900) {
    vncPort = await freePort();
  }
  const serialPort = await freePort();

  const host = options.listen?.address ?? '127.0.0.1';
  const args = [
    '-name',
    'keyhole-test',
    '-machine',
    'pc',
    '-accel',
    options.accel ?? 'tcg',
    '-m',
    '64',
    '-nodefaults',
    '-no-user-config',
    '-vga',
    'std',
    '-display',
    'none',
    ...(options.vncTls
      ? [
          '-object',
          `tls-creds-x509,id=vnc-tls,dir=${options.vncTls.directory},endpoint=server,verify-peer=${options.vncTls.verifyPeer === false ? 'off' : 'on'}`,
        ]
      : []),
    '-vnc',
    `${host}:${vncPort - 5900}${options.vncTls ? ',tls-creds=vnc-tls' : ''}`,
    '-chardev',
    `socket,id=${SERIAL_CHARDEV_ID},host=${host},port=${serialPort},server=on,wait=off`,
    '-serial',
    `chardev:${SERIAL_CHARDEV_ID}`,
    '-qmp',
    `unix:${qmpPath},server=on,wait=off`,
    // SeaBIOS's debug log: reset() reads it to know when a reset is safe.
    '-chardev',
    `file,id=firmware-log,path=${firmwareLogPath}`,
    '-device',
    'isa-debugcon,iobase=0x402,chardev=firmware-log',
    // SeaBIOS writes to the debug port only, unless told to mirror its screen on a serial port.
    // (QEMU warns that the name is not under "opt/"; SeaBIOS reads exactly this name.)
    '-fw_cfg',
    `name=etc/sercon-port,file=${serconFile}`,
    // The boot menu prompt is one more recognisable line ("Press ESC for boot menu.") on both consoles.
    '-boot',
    'menu=on,splash-time=500',
    ...(options.paused ? ['-S'] : []),
  ];

  let qemu: ManagedProcess | undefined;
  let qmp: QmpClient | undefined;
  const cancel = new AbortController();
  const signal = cancel.signal;
  const removeDirectory = (): void => rmSync(directory, { recursive: true, force: true });
  try {
    const namespace = options.listen?.namespace;
    qemu =
      namespace === undefined
        ? await startProcess(QEMU_BINARY, args)
        : await startProcess('ip', ['netns', 'exec', namespace, QEMU_BINARY, ...args], { name: `QEMU in ${namespace}` });
    const started = qemu;
    const describe = (what: string): string =>
      `QEMU to ${what} (the start timeout).\n  command: ${started.commandLine}\n  output:\n${started.output()}`;
    const retry = <T>(attempt: () => Promise<T>, what: string): Promise<T> =>
      waitUntil(attempt, deadline - Date.now(), () => describe(what), { intervalMs: 50, retryErrors: true, signal });
    const ready = (async () => {
      const banner = await retry(
        () =>
          namespace === undefined
            ? readFirstBytes(vncPort, RFB_BANNER.length, 1_000)
            : readInNamespace(namespace, host, vncPort, RFB_BANNER.length),
        `send the RFB banner on VNC port ${vncPort}`,
      );
      if (banner.toString('latin1') !== RFB_BANNER) {
        throw new Error(`VNC port ${vncPort} sent ${JSON.stringify(banner.toString('latin1'))}, not the RFB 3.8 banner`);
      }
      await retry(async () => {
        if (namespace === undefined) {
          await closeSocket(await connectTcp(serialPort, 1_000));
        } else {
          await readInNamespace(namespace, host, serialPort, 0);
        }
        return true;
      }, `accept on serial port ${serialPort}`);
      const client = await retry(() => QmpClient.connect(qmpPath, 1_000), `answer QMP on ${qmpPath}`);
      if (signal.aborted) {
        client.close();
      }
      qmp = client;
      // The probe must be gone from QEMU's side too, or a test's "client attached" check could see it.
      await waitForChardev(client, (filename) => filename.startsWith('disconnected:'), {
        deadline,
        describe: () => describe('notice the serial probe disconnecting'),
        signal,
      });
      if (!options.paused) {
        await waitForFirmwareSettled(firmwareLogPath, 1, { deadline, describe: () => describe('finish its first boot'), signal });
      }
      return client;
    })();
    const client = await Promise.race([ready, failOnExit(started, 'QEMU', 'while starting')]);
    return makeVm({
      qemu: started,
      qmp: client,
      host,
      vncPort,
      serialPort,
      firmwareLogPath,
      paused: options.paused ?? false,
      removeDirectory,
    });
  } catch (error) {
    cancel.abort();
    qmp?.close();
    await qemu?.stop();
    removeDirectory();
    throw error;
  }
}

function makeVm({
  qemu,
  qmp,
  host,
  vncPort,
  serialPort,
  firmwareLogPath,
  paused,
  removeDirectory,
}: {
  qemu: ManagedProcess;
  qmp: QmpClient;
  host: string;
  vncPort: number;
  serialPort: number;
  firmwareLogPath: string;
  paused: boolean;
  removeDirectory: () => void;
}): QemuVm {
  const command = async (name: string): Promise<void> => {
    await Promise.race([qmp.execute(name), failOnExit(qemu, 'QEMU', `before answering ${name}`)]);
  };
  let cpuHasRun = !paused;
  // The firmware log's count of FIRMWARE_SETTLED once the boot in progress has settled.
  let settledWhenIdle = 1;
  const resetOnce = async (timeoutMs: number): Promise<void> => {
    if (cpuHasRun) {
      await Promise.race([
        waitForFirmwareSettled(firmwareLogPath, settledWhenIdle, {
          deadline: Date.now() + timeoutMs,
          describe: () => "QEMU's guest to settle (a reset before that can wedge it)",
        }),
        failOnExit(qemu, 'QEMU', 'while waiting for its guest to settle before a reset'),
      ]);
    }
    settledWhenIdle = settledCount(firmwareLogPath) + 1;
    await command('system_reset');
  };
  // One reset at a time: a second one must wait for the boot the first one started.
  let resets: Promise<void> = Promise.resolve();
  const vm: QemuVm = {
    host,
    vncPort,
    serialPort,
    pid: qemu.pid,
    commandLine: qemu.commandLine,
    output: () => qemu.output(),
    firmwareLog: () => readFirmwareLog(firmwareLogPath),
    reset({ timeoutMs = 10_000 } = {}) {
      const run = resets.then(() => resetOnce(timeoutMs));
      resets = run.catch(() => undefined);
      return run;
    },
    resume() {
      cpuHasRun = true;
      return command('cont');
    },
    async waitForSerialClient({ localPort, timeoutMs = 5_000 } = {}) {
      const peer = localPort === undefined ? undefined : `<-> 127.0.0.1:${localPort}`;
      await waitForChardev(qmp, (filename) => !filename.startsWith('disconnected:') && (peer === undefined || filename.endsWith(peer)), {
        deadline: Date.now() + timeoutMs,
        describe: () =>
          `QEMU to attach ${localPort === undefined ? 'a client' : `the client from port ${localPort}`} to serial port ${serialPort}`,
      });
    },
    async connectSerial(timeoutMs = 5_000) {
      if (host !== '127.0.0.1') {
        throw new Error(`QEMU's serial port listens on ${host} in another network namespace: connect through the route under test`);
      }
      const socket = await connectTcp(serialPort, timeoutMs);
      const serial = new SerialConsole(socket);
      try {
        await vm.waitForSerialClient({ localPort: socket.localPort, timeoutMs });
      } catch (error) {
        await serial.close();
        throw error;
      }
      return serial;
    },
    stop: (() => {
      let stopping: Promise<void> | undefined;
      return () =>
        (stopping ??= (async () => {
          qmp.close();
          await qemu.stop();
          removeDirectory();
        })());
    })(),
  };
  return vm;
}

/** The first `length` bytes `host:port` sends, read from inside `namespace`; throws (to be retried) otherwise. */
async function readInNamespace(namespace: string, host: string, port: number, length: number): Promise<Buffer> {
  const probe = await probeTcp(namespace, host, port, { timeoutMs: 1_000, readBytes: length });
  if (probe.result !== 'open' || probe.bytes.length < length) {
    throw new Error(`${host}:${port} in ${namespace}: ${JSON.stringify(probe)}`);
  }
  return probe.bytes;
}

function readFirmwareLog(path: string): string {
  try {
    return readFileSync(path, 'latin1');
  } catch {
    return ''; // QEMU has not created it yet.
  }
}

function settledCount(firmwareLogPath: string): number {
  return readFirmwareLog(firmwareLogPath).split(FIRMWARE_SETTLED).length - 1;
}

/** How long a wait of QEMU's start or of a test may take, what it is for, and what cancels it. */
interface WaitBudget {
  /** Date.now() to give up at. */
  deadline: number;
  describe: () => string;
  signal?: AbortSignal;
}

/** Runs `check` every 20 ms until it stops throwing; at the deadline, fails with its last error. */
async function checkUntil(check: () => Promise<void> | void, { deadline, describe, signal }: WaitBudget): Promise<void> {
  await waitUntil(
    async () => {
      await check();
      return true;
    },
    deadline - Date.now(),
    describe,
    { intervalMs: 20, retryErrors: true, signal },
  );
}

/** Waits until SeaBIOS has reported `count` settled boots in all, failing with the log's end. */
function waitForFirmwareSettled(firmwareLogPath: string, count: number, budget: WaitBudget): Promise<void> {
  return checkUntil(() => {
    if (settledCount(firmwareLogPath) < count) {
      throw new Error(`firmware log ends:\n${readFirmwareLog(firmwareLogPath).slice(-1_000)}`);
    }
  }, budget);
}

function waitForChardev(qmp: QmpClient, accept: (filename: string) => boolean, budget: WaitBudget): Promise<void> {
  return checkUntil(async () => {
    const chardevs = (await qmp.execute('query-chardev')) as { label: string; filename: string }[];
    const filename = chardevs.find((chardev) => chardev.label === SERIAL_CHARDEV_ID)?.filename;
    if (filename === undefined || !accept(filename)) {
      throw new Error(`serial chardev is ${filename ?? 'missing'}`);
    }
  }, budget);
}

/** Collects everything QEMU sends on one serial connection, as text. */
export class SerialConsole {
  private received = '';
  private readonly waiters = new Set<() => void>();

  constructor(readonly socket: Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      this.received += chunk;
      for (const waiter of this.waiters) {
        waiter();
      }
    });
    socket.on('close', () => {
      for (const waiter of this.waiters) {
        waiter();
      }
    });
    socket.on('error', () => undefined);
  }

  /** Everything received so far (bytes as latin1, so ANSI escapes survive as-is). */
  text(): string {
    return this.received;
  }

  /**
   * Resolves with the first match of `pattern` in the output, including output already received
   * from offset `from` (a past `text().length`, default 0) on.
   */
  waitForText(pattern: RegExp, timeoutMs = 10_000, { from = 0 }: { from?: number } = {}): Promise<RegExpMatchArray> {
    return new Promise((resolve, reject) => {
      const searched = (): string => `received${from > 0 ? ` from offset ${from}` : ''}: ${JSON.stringify(this.received.slice(from))}`;
      const check = (): void => {
        const match = this.received.slice(from).match(pattern);
        if (match) {
          finish();
          resolve(match);
        } else if (this.socket.closed) {
          finish();
          reject(new Error(`serial connection closed before ${pattern} appeared; ${searched()}`));
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`${pattern} did not appear on serial within ${timeoutMs} ms; ${searched()}`));
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  close(): Promise<void> {
    return closeSocket(this.socket);
  }
}

/** A minimal QMP client: one command at a time over a unix socket, events ignored. */
class QmpClient {
  private buffered = '';
  private nextId = 1;
  private readonly pending = new Map<string, { resolve: (value: unknown) => void; reject: (error: Error) => void }>();
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('close', () => this.failAll(new Error('QMP connection closed')));
    socket.on('error', (error) => this.failAll(error));
  }

  static async connect(path: string, timeoutMs: number): Promise<QmpClient> {
    const socket = createConnection({ path });
    const greeting = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no QMP greeting within ${timeoutMs} ms`)), timeoutMs);
      socket.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
      let text = '';
      const onData = (chunk: Buffer): void => {
        text += chunk.toString('utf8');
        if (!text.includes('\n')) {
          return;
        }
        clearTimeout(timer);
        socket.off('data', onData);
        if (text.includes('"QMP"')) {
          resolve();
        } else {
          reject(new Error(`unexpected QMP greeting: ${text}`));
        }
      };
      socket.on('data', onData);
    });
    try {
      await greeting;
    } catch (error) {
      socket.destroy();
      throw error;
    }
    socket.removeAllListeners('error');
    const client = new QmpClient(socket);
    await client.execute('qmp_capabilities');
    return client;
  }

  /** Runs a QMP command and resolves with its `return` value; rejects on a QMP error or after `timeoutMs`. */
  execute(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<unknown> {
    const run = (): Promise<unknown> =>
      new Promise((resolve, reject) => {
        if (this.socket.destroyed) {
          return reject(new Error('QMP connection closed'));
        }
        const id = String(this.nextId++);
        const timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new Error(`QMP ${command} got no answer within ${timeoutMs} ms`));
        }, timeoutMs);
        const settle = (): void => {
          clearTimeout(timer);
          this.pending.delete(id);
        };
        this.pending.set(id, {
          resolve: (value) => {
            settle();
            resolve(value);
          },
          reject: (error) => {
            settle();
            reject(error);
          },
        });
        this.socket.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
      });
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(chunk: string): void {
    this.buffered += chunk;
    let newline: number;
    while ((newline = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, newline).trim();
      this.buffered = this.buffered.slice(newline + 1);
      if (!line) {
        continue;
      }
      const message = JSON.parse(line) as { id?: string; return?: unknown; error?: { class: string; desc: string } };
      if (message.id === undefined) {
        continue;
      } // an event
      const waiter = this.pending.get(message.id);
      if (message.error) {
        waiter?.reject(new Error(`QMP ${message.error.class}: ${message.error.desc}`));
      } else {
        waiter?.resolve(message.return);
      }
    }
  }

  private failAll(error: Error): void {
    for (const waiter of [...this.pending.values()]) {
      waiter.reject(error);
    }
  }
}
