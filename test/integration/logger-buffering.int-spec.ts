import { spawn } from 'node:child_process';
import path from 'node:path';

const LOGGER = path.resolve(__dirname, '../../dist/libs/observability/src/logger.js');

/**
 * A process whose stdout logger groups lines (`flushIntervalMs`), as the token API's and the proxy's do. `script`
 * runs with `logger` in scope; resolves with every stdout line and when each arrived.
 */
function runLogger(script: string): Promise<{ lines: { msg: string; atMs: number }[]; exitCode: number | null }> {
  const program = `
    const { createLogger } = require(${JSON.stringify(LOGGER)});
    const logger = createLogger({ level: 'info', name: 'buffered', flushIntervalMs: 200 });
    ${script}`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', program], { stdio: ['ignore', 'pipe', 'ignore'] });
    const startedAt = Date.now();
    const lines: { msg: string; atMs: number }[] = [];
    let pending = '';
    child.stdout.on('data', (chunk: Buffer) => {
      pending += chunk.toString('utf8');
      const complete = pending.split('\n');
      pending = complete.pop() ?? '';
      for (const line of complete) {
        lines.push({ msg: (JSON.parse(line) as { msg: string }).msg, atMs: Date.now() - startedAt });
      }
    });
    child.on('error', reject);
    child.on('close', (exitCode) => resolve({ lines, exitCode }));
  });
}

describe('a logger that groups its stdout lines', () => {
  it('writes a lone line within the flush interval, while the process keeps running', async () => {
    const { lines } = await runLogger(`
      logger.info('first');
      setTimeout(() => { logger.info('last'); process.exit(0); }, 1500);`);
    expect(lines.map((line) => line.msg)).toEqual(['first', 'last']);
    // Written by the periodic flush, long before the process ended.
    expect(lines[0].atMs).toBeLessThan(lines[1].atMs - 700);
  });

  it('loses no pending line when the process exits normally or on an uncaught error', async () => {
    const normal = await runLogger(`for (let i = 0; i < 5; i++) logger.info('line ' + i);`);
    expect(normal.lines.map((line) => line.msg)).toEqual(['line 0', 'line 1', 'line 2', 'line 3', 'line 4']);
    const crashed = await runLogger(`logger.info('before the crash'); setImmediate(() => { throw new Error('boom'); });`);
    expect(crashed.exitCode).not.toBe(0);
    expect(crashed.lines.map((line) => line.msg)).toEqual(['before the crash']);
  });
});
