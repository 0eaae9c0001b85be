import { LoggerService } from '@nestjs/common';
import pino, { DestinationStream, Logger } from 'pino';

export type LogLevelName = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

/**
 * Paths that must never reach a log line even if a caller passes them by mistake. Request URLs are
 * not logged at all (the proxy's carry the token in their query), only paths.
 */
const REDACTED_PATHS = [
  'token',
  '*.token',
  'key',
  '*.key',
  'secret',
  '*.secret',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'headers.cookie',
  'databaseUrl',
  '*.databaseUrl',
  'password',
  '*.password',
];

/** Bytes of log lines held before they are written, when lines are buffered. */
const LOG_BUFFER_BYTES = 8192;

export interface LoggerOptions {
  level: LogLevelName;
  name: string;
  /** Where lines go; default standard output. Tests capture every line through it. */
  destination?: DestinationStream;
  /**
   * Buffers lines written to standard output and writes them when 8 KiB are held or every this
   * many ms (and on exit), instead of one write per line: a process that logs a line per
   * connection otherwise spends a system call per line. Undefined = one write per line.
   */
  flushIntervalMs?: number;
}

/** The process's structured JSON logger. */
export function createLogger(options: LoggerOptions): Logger {
  return pino(
    {
      name: options.name,
      level: options.level,
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    options.destination ?? standardOutput(options.flushIntervalMs),
  );
}

function standardOutput(flushIntervalMs: number | undefined): DestinationStream {
  if (flushIntervalMs === undefined) {
    return pino.destination({ fd: 1, sync: false });
  }
  // pino flushes what is held synchronously when the process exits.
  const destination = pino.destination({ fd: 1, sync: false, minLength: LOG_BUFFER_BYTES });
  setInterval(() => destination.flush(), flushIntervalMs).unref();
  return destination;
}

/**
 * Nest's logger interface over pino. Nest calls `log(message, ...params, context)`; keyhole code
 * calls `logger.log({ fields }, 'message')`, which arrives as `(fields, 'message', context)`.
 */
export class PinoNestLogger implements LoggerService {
  constructor(private readonly logger: Logger) {}

  log(message: unknown, ...params: unknown[]): void {
    this.write('info', message, params);
  }

  error(message: unknown, ...params: unknown[]): void {
    // Nest passes (message, stack, context) for its own errors.
    this.write('error', message, params);
  }

  warn(message: unknown, ...params: unknown[]): void {
    this.write('warn', message, params);
  }

  debug(message: unknown, ...params: unknown[]): void {
    this.write('debug', message, params);
  }

  verbose(message: unknown, ...params: unknown[]): void {
    this.write('trace', message, params);
  }

  fatal(message: unknown, ...params: unknown[]): void {
    this.write('fatal', message, params);
  }

  private write(level: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal', message: unknown, params: unknown[]): void {
    const rest = [...params];
    const context = rest.length > 0 && typeof rest[rest.length - 1] === 'string' ? (rest.pop() as string) : undefined;
    if (typeof message === 'object' && message !== null && !(message instanceof Error)) {
      const text = typeof rest[0] === 'string' ? rest[0] : undefined;
      this.logger[level]({ context, ...(message as Record<string, unknown>) }, text);
      return;
    }
    if (message instanceof Error) {
      this.logger[level]({ context, err: message }, message.message);
      return;
    }
    const stack = level === 'error' && typeof rest[0] === 'string' ? rest[0] : undefined;
    this.logger[level]({ context, ...(stack ? { stack } : {}) }, String(message));
  }
}
