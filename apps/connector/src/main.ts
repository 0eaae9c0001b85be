import { ConfigurationError, loadConfig } from '@keyhole/config';
import { CONNECTOR_COMMANDS, ConnectorUsageError } from '@keyhole/connector';

/*
 * The connector on its own: `node dist/apps/connector/src/main.js serve|expose|status ...`, the same
 * commands as `keyhole connector ...`, without the rest of the CLI.
 */
async function main(argv: string[]): Promise<number> {
  const command = CONNECTOR_COMMANDS.find((candidate) => candidate.name === argv[0]);
  if (!command) {
    process.stdout.write(`usage:\n${CONNECTOR_COMMANDS.map((candidate) => `  ${candidate.usage}`).join('\n')}\n`);
    return argv.length === 0 || ['help', '--help', '-h'].includes(argv[0]) ? 0 : 2;
  }
  try {
    const config = loadConfig();
    return await command.run({
      args: argv.slice(1),
      runDir: config.connector.runDir,
      logLevel: config.log.level,
      out: (line) => process.stdout.write(`${line}\n`),
    });
  } catch (error) {
    if (error instanceof ConnectorUsageError) {
      process.stderr.write(`error: ${error.message}\nusage: ${command.usage}\n`);
      return 2;
    }
    if (error instanceof ConfigurationError) {
      process.stderr.write(`${error.message}\n`);
      return 2;
    }
    process.stderr.write(`error: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`error: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  },
);
