import { cellNameSchema, credentialNameSchema } from '@keyhole/core';
import { CredentialsService } from '@keyhole/credentials';
import { z } from 'zod';
import { Command, parseFlags, printRows, UsageError, validated } from './command';

export const credentialsCreateCommand: Command = {
  name: 'credentials create',
  usage: 'keyhole credentials create --role agent|operator [--cell NAME] [--name NAME]',
  summary: 'create an API key and print it once (agents need --cell; operators without --cell act on every cell)',
  async run({ args, services, out }) {
    const { values } = parseFlags(args, {
      role: { type: 'string' },
      cell: { type: 'string' },
      name: { type: 'string' },
    });
    const role = validated(z.enum(['agent', 'operator']), values.role, '--role');
    const cellName = values.cell === undefined ? null : validated(cellNameSchema, values.cell, '--cell');
    if (role === 'agent' && cellName === null) {
      throw new UsageError('--cell: an agent credential needs a cell');
    }
    const name = validated(credentialNameSchema, values.name ?? `${role}${cellName ? `-${cellName}` : ''}`, '--name');
    const { credential, key } = await (await services()).get(CredentialsService).create({ name, role, cellName });
    out(
      `created ${credential.role} credential ${credential.id} (${credential.name}${credential.cell ? `, cell ${credential.cell}` : ', every cell'})`,
    );
    out('API key (shown once, keep it secret):');
    out(key);
    return 0;
  },
};

export const credentialsListCommand: Command = {
  name: 'credentials list',
  usage: 'keyhole credentials list [--all] [--json]',
  summary: 'list API credentials (never their keys); --all includes revoked ones',
  async run({ args, services, out }) {
    const { values } = parseFlags(args, { all: { type: 'boolean' }, json: { type: 'boolean' } });
    const credentials = await (await services()).get(CredentialsService).list({ includeRevoked: values.all ?? false });
    printRows(out, credentials as unknown as Record<string, unknown>[], values.json ?? false);
    return 0;
  },
};

export const credentialsRevokeCommand: Command = {
  name: 'credentials revoke',
  usage: 'keyhole credentials revoke ID',
  summary: 'revoke an API credential; it is refused from the next request on',
  async run({ args, services, out }) {
    const { positionals } = parseFlags(args, {}, true);
    if (positionals.length !== 1) {
      throw new UsageError('name exactly one credential id');
    }
    const id = validated(z.string().regex(/^[0-9a-f]{16}$/, 'must be 16 lowercase hex characters'), positionals[0], 'ID');
    await (await services()).get(CredentialsService).revoke(id);
    out(`revoked credential ${id}`);
    return 0;
  },
};
