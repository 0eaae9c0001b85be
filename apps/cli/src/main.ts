import 'reflect-metadata';
import { INestApplicationContext } from '@nestjs/common';
import { ConfigurationError, loadConfig } from '@keyhole/config';
import { isKeyholeError } from '@keyhole/core';
import { isDatabaseUnavailable } from '@keyhole/db';
import { Command, UsageError } from './commands/command';
import { COMMANDS } from './commands';
import { openServices } from './services';

/**
 * Exit codes: 0 done, 1 the operation failed, 2 the command was called wrongly or misconfigured,
 * 3 `legacy import` finished but skipped entries (reported by reason).
 */
export async function runCli(argv: string[], out: (line: string) => void = (line) => process.stdout.write(`${line}\n`)): Promise<number> {
  const found = findCommand(argv);
  if (!found) {
    out(helpText());
    return argv.length === 0 || ['help', '--help', '-h'].includes(argv[0]) ? 0 : 2;
  }
  const { command, args } = found;
  if (args.includes('--help') || args.includes('-h')) {
    out(`usage: ${command.usage}\n\n${command.summary}`);
    return 0;
  }
  let app: INestApplicationContext | undefined;
  try {
    const config = loadConfig();
    const services = async () => (app ??= await openServices(config));
    return await command.run({ args, config, services, out });
  } catch (error) {
    return reportFailure(error, command);
  } finally {
    await app?.close();
  }
}

function findCommand(argv: string[]): { command: Command; args: string[] } | undefined {
  for (const words of [2, 1]) {
    const name = argv.slice(0, words).join(' ');
    const command = COMMANDS.find((candidate) => candidate.name === name);
    if (command) {
      return { command, args: argv.slice(words) };
    }
  }
  return undefined;
}

function reportFailure(error: unknown, command: Command): number {
  if (error instanceof UsageError) {
    process.stderr.write(`error: ${error.message}\nusage: ${command.usage}\n`);
    return 2;
  }
  if (error instanceof ConfigurationError) {
    process.stderr.write(`${error.message}\n`);
    return 2;
  }
  if (isKeyholeError(error)) {
    process.stderr.write(`error: ${error.code}: ${error.message}\n`);
    return 1;
  }
  if (isDatabaseUnavailable(error)) {
    // Within KEYHOLE_DB_CONNECT_TIMEOUT_MS / KEYHOLE_DB_QUERY_TIMEOUT_MS, never a hang.
    const detail = error instanceof Error ? ` (${error.message})` : '';
    process.stderr.write(`error: SERVICE_UNAVAILABLE: the database did not answer in time or cannot be reached${detail}\n`);
    return 1;
  }
  process.stderr.write(`error: ${error instanceof Error ? error.message : String(error)}\n`);
  return 1;
}

function helpText(): string {
  const width = Math.max(...COMMANDS.map((command) => command.name.length));
  return [
    'keyhole: console tokens and console proxies for clouds',
    '',
    'usage: keyhole COMMAND [options]   (keyhole COMMAND --help for its options)',
    '',
    ...COMMANDS.map((command) => `  ${command.name.padEnd(width)}  ${command.summary}`),
    '',
    'The control database comes from KEYHOLE_DATABASE_URL; see README.md for every setting.',
  ].join('\n');
}

if (require.main === module) {
  runCli(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      process.stderr.write(`error: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exitCode = 1;
    },
  );
}
