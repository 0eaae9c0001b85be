import { consoleHostSchema, portSchema } from '@keyhole/core';
import { describeRoute, loadRoutesFile } from '@keyhole/upstream';
import { z } from 'zod';
import { Command, parseFlags, printRows, UsageError, validated } from './command';

/*
 * Routes files need no database and no running service: these commands read the file with the
 * same parser the token API and the proxies use, and nothing else.
 */

export const routesCheckCommand: Command = {
  name: 'routes check',
  usage: 'keyhole routes check FILE [--json]',
  summary: 'validate a routes file and print its table (name, match, ports, via); exit 1 with every problem if it is bad',
  async run({ args, out }) {
    const { values, positionals } = parseFlags(args, { json: { type: 'boolean' } }, true);
    if (positionals.length !== 1) {
      throw new UsageError('give exactly one routes file');
    }
    // A bad file throws a RoutesFileError naming each problem's line and field: exit 1.
    const routes = await loadRoutesFile(positionals[0]);
    printRows(out, routes.list.map(describeRoute), values.json ?? false);
    return 0;
  },
};

export const routesWhichCommand: Command = {
  name: 'routes which',
  usage: 'keyhole routes which HOST PORT [--file FILE]',
  summary: 'say which route a console destination takes (default file: KEYHOLE_ROUTES_FILE); exit 1 when none does',
  async run({ args, config, out }) {
    const { values, positionals } = parseFlags(args, { file: { type: 'string' } }, true);
    if (positionals.length !== 2) {
      throw new UsageError('give a HOST and a PORT');
    }
    const host = validated(consoleHostSchema, positionals[0], 'HOST');
    const port = validated(z.coerce.number().pipe(portSchema), positionals[1], 'PORT');
    const file = values.file ?? config.routes.file;
    if (file === undefined) {
      throw new UsageError('give --file FILE or set KEYHOLE_ROUTES_FILE');
    }
    const route = (await loadRoutesFile(file)).match(host, port);
    if (!route) {
      out(`${host}:${port}: no route (the proxies refuse to dial it and the token API issues no token for it)`);
      return 1;
    }
    const described = describeRoute(route);
    out(
      `${host}:${port}: route ${described.name} (${file}:${route.line}): ${described.match}, ports ${described.ports}, via ${described.via}`,
    );
    return 0;
  },
};
