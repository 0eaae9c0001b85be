import { CONNECTOR_COMMANDS, ConnectorUsageError } from '@keyhole/connector';
import { Command, UsageError } from './command';

/** `keyhole connector serve|expose|status`: the connector's own commands (libs/connector), under the CLI. */
export const connectorCommands: Command[] = CONNECTOR_COMMANDS.map((command) => ({
  name: `connector ${command.name}`,
  usage: command.usage,
  summary: command.summary,
  async run({ args, config, out }) {
    try {
      return await command.run({ args, runDir: config.connector.runDir, logLevel: config.log.level, out });
    } catch (error) {
      throw error instanceof ConnectorUsageError ? new UsageError(error.message) : error;
    }
  },
}));
