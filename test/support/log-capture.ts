import { Writable } from 'node:stream';
import type { Logger } from 'pino';
import { createLogger, PinoNestLogger } from '@keyhole/observability';

/** A real pino logger whose every line is kept in memory, to assert what logs do (not) contain. */
export function captureLogs(name = 'keyhole-test'): { logger: PinoNestLogger; pino: Logger; lines: string[]; text: () => string } {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      callback();
    },
  });
  const pino = createLogger({ level: 'trace', name, destination });
  return { logger: new PinoNestLogger(pino), pino, lines, text: () => lines.join('\n') };
}
