import { CellsService } from '@keyhole/cells';
import { cellNameSchema, consoleHostSchema, instanceUuidSchema } from '@keyhole/core';
import { PurgeService, TokensService } from '@keyhole/tokens';
import { z } from 'zod';
import { Command, parseFlags, printRows, UsageError, validated } from './command';

export const tokensListCommand: Command = {
  name: 'tokens list',
  usage: 'keyhole tokens list --cell NAME [--instance UUID] [--limit N] [--json]',
  summary: "list a cell's tokens (id, fingerprint, type, host, port, expiry; never the token)",
  async run({ args, services, out }) {
    const { values } = parseFlags(args, {
      cell: { type: 'string' },
      instance: { type: 'string' },
      limit: { type: 'string' },
      json: { type: 'boolean' },
    });
    const cell = validated(cellNameSchema, values.cell, '--cell');
    const instanceUuid = values.instance === undefined ? undefined : validated(instanceUuidSchema, values.instance, '--instance');
    const limit = validated(z.coerce.number().int().min(1).max(10_000), values.limit ?? '1000', '--limit');
    const tokens = await (await services()).get(TokensService).list(cell, { instanceUuid, limit });
    printRows(
      out,
      tokens.map((token) => {
        const view = token.toPrimitive();
        return {
          id: view.id,
          fingerprint: view.fingerprint,
          type: view.consoleType,
          instance: view.instanceUuid,
          host: view.host,
          port: view.port,
          expiresAt: view.expiresAt,
        };
      }),
      values.json ?? false,
    );
    return 0;
  },
};

export const tokensRevokeCommand: Command = {
  name: 'tokens revoke',
  usage: 'keyhole tokens revoke --cell NAME (--id ID | --instance UUID)',
  summary: 'revoke one token, or every token of an instance',
  async run({ args, services, out }) {
    const { values } = parseFlags(args, { cell: { type: 'string' }, id: { type: 'string' }, instance: { type: 'string' } });
    const cell = validated(cellNameSchema, values.cell, '--cell');
    if ((values.id === undefined) === (values.instance === undefined)) {
      throw new UsageError('give exactly one of --id and --instance');
    }
    const tokens = (await services()).get(TokensService);
    if (values.id !== undefined) {
      const id = validated(z.coerce.number().int().min(1), values.id, '--id');
      await tokens.revokeById(cell, id);
      out(`revoked token ${id} in cell ${cell}`);
    } else {
      const instance = validated(instanceUuidSchema, values.instance, '--instance');
      const ids = await tokens.revokeByInstance(cell, instance);
      out(`revoked ${ids.length} token(s) of instance ${instance} in cell ${cell}`);
    }
    return 0;
  },
};

export const tokensPurgeCommand: Command = {
  name: 'tokens purge',
  usage: 'keyhole tokens purge [--cell NAME] [--host HOST]',
  summary: 'delete expired tokens (and sessions past retention) now, of one cell or every cell, optionally of one console host',
  async run({ args, services, out }) {
    const { values } = parseFlags(args, { cell: { type: 'string' }, host: { type: 'string' } });
    const host = values.host === undefined ? undefined : validated(consoleHostSchema, values.host, '--host');
    const app = await services();
    const cells =
      values.cell !== undefined
        ? [validated(cellNameSchema, values.cell, '--cell')]
        : (await app.get(CellsService).list()).map((cell) => cell.name);
    let busy = false;
    for (const cell of cells) {
      const result = await app.get(PurgeService).purgeCell(cell, { host });
      if (!result.ran) {
        busy = true;
        out(`cell ${cell}: another purge is running; skipped`);
      } else {
        out(
          `cell ${cell}: purged ${result.tokens} expired token(s)${host === undefined ? ` and ${result.sessions} old session(s)` : ''} in ${Math.round(result.durationMs)} ms`,
        );
      }
    }
    return busy ? 1 : 0;
  },
};
