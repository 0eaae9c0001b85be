import { cellsAddCommand, cellsListCommand, cellsRemoveCommand } from './cells.command';
import { Command } from './command';
import { connectorCommands } from './connector.command';
import { credentialsCreateCommand, credentialsListCommand, credentialsRevokeCommand } from './credentials.command';
import { fallbackCommand } from './fallback.command';
import { legacyImportCommand } from './legacy.command';
import { localCommand } from './local.command';
import { migrateCommand } from './migrate.command';
import { routesCheckCommand, routesWhichCommand } from './routes.command';
import { tokensListCommand, tokensPurgeCommand, tokensRevokeCommand } from './tokens.command';

export const COMMANDS: Command[] = [
  localCommand,
  migrateCommand,
  cellsAddCommand,
  cellsListCommand,
  cellsRemoveCommand,
  credentialsCreateCommand,
  credentialsListCommand,
  credentialsRevokeCommand,
  tokensListCommand,
  tokensRevokeCommand,
  tokensPurgeCommand,
  fallbackCommand,
  legacyImportCommand,
  routesCheckCommand,
  routesWhichCommand,
  ...connectorCommands,
];
