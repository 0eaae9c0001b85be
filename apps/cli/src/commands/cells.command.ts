import { CellsService } from '@keyhole/cells';
import { absoluteUrlSchema, cellNameSchema, CONSOLE_TYPES, ConsoleType, isConsoleType, postgresUrlSchema } from '@keyhole/core';
import { Command, parseFlags, printRows, UsageError, validated } from './command';

export const cellsAddCommand: Command = {
  name: 'cells add',
  usage: 'keyhole cells add NAME --database-url URL --proxy-url URL [--access-url-base TYPE=URL ...]',
  summary: 'register a cell (its database is migrated first); TYPE is one of novnc, spice-html5, serial',
  async run({ args, services, out }) {
    const { values, positionals } = parseFlags(
      args,
      {
        'database-url': { type: 'string' },
        'proxy-url': { type: 'string' },
        'access-url-base': { type: 'string', multiple: true },
      },
      true,
    );
    if (positionals.length !== 1) {
      throw new UsageError('name exactly one cell');
    }
    const name = validated(cellNameSchema, positionals[0], 'NAME');
    const databaseUrl = validated(postgresUrlSchema, values['database-url'], '--database-url');
    const proxyUrl = validated(absoluteUrlSchema(['http', 'https']), values['proxy-url'], '--proxy-url');
    const accessUrlBases: Partial<Record<ConsoleType, string>> = {};
    for (const entry of values['access-url-base'] ?? []) {
      const [type, ...rest] = entry.split('=');
      if (!isConsoleType(type)) {
        throw new UsageError(`--access-url-base: TYPE must be one of ${CONSOLE_TYPES.join(', ')}`);
      }
      accessUrlBases[type] = validated(absoluteUrlSchema(['http', 'https', 'ws', 'wss']), rest.join('='), '--access-url-base');
    }
    const cell = await (await services()).get(CellsService).register({ name, databaseUrl, proxyUrl, accessUrlBases });
    out(`registered cell ${cell.name} (proxy ${cell.proxyUrl})`);
    return 0;
  },
};

export const cellsListCommand: Command = {
  name: 'cells list',
  usage: 'keyhole cells list [--json]',
  summary: 'list the registered cells and their access URL bases',
  async run({ args, services, out }) {
    const { values } = parseFlags(args, { json: { type: 'boolean' } });
    const cells = await (await services()).get(CellsService).list();
    printRows(
      out,
      cells.map((cell) => ({ name: cell.name, proxyUrl: cell.proxyUrl, ...cell.accessUrlBases })),
      values.json ?? false,
    );
    return 0;
  },
};

export const cellsRemoveCommand: Command = {
  name: 'cells remove',
  usage: 'keyhole cells remove NAME',
  summary: 'unregister a cell and revoke the credentials scoped to it (its database is kept)',
  async run({ args, services, out }) {
    const { positionals } = parseFlags(args, {}, true);
    if (positionals.length !== 1) {
      throw new UsageError('name exactly one cell');
    }
    const name = validated(cellNameSchema, positionals[0], 'NAME');
    const { revokedCredentials } = await (await services()).get(CellsService).remove(name);
    out(`removed cell ${name}; revoked ${revokedCredentials} credential(s)`);
    return 0;
  },
};
