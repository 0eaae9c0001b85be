import { userInfo } from 'node:os';
import { FallbackService, FallbackStatus } from '@keyhole/tokens';
import { selectCells } from './cell-selection';
import { Command, parseFlags, UsageError } from './command';

export const fallbackCommand: Command = {
  name: 'fallback',
  usage: 'keyhole fallback on|off|status (--cell NAME | --all) [--json]',
  summary: 'switch the legacy Redis fallback of a cell (or all) on or off live, or show it with its history and recent legacy sessions',
  async run({ args, services, out }) {
    const { values, positionals } = parseFlags(
      args,
      { cell: { type: 'string' }, all: { type: 'boolean' }, json: { type: 'boolean' } },
      true,
    );
    const action = positionals[0];
    if (positionals.length !== 1 || !['on', 'off', 'status'].includes(action)) {
      throw new UsageError('say on, off or status');
    }
    const { app, cells } = await selectCells(values, services);
    const fallback = app.get(FallbackService);
    const results: FallbackStatus[] = [];
    for (const cell of cells) {
      if (action === 'status') {
        results.push(await fallback.status(cell));
      } else {
        results.push(await fallback.set(cell, action === 'on', `cli ${userInfo().username}`));
      }
    }
    if (values.json) {
      out(JSON.stringify(results, null, 2));
      return 0;
    }
    for (const status of results) {
      const last = status.flag
        ? ` (set ${status.flag.enabled ? 'on' : 'off'} by ${status.flag.changedBy} at ${status.flag.changedAt})`
        : ' (never set)';
      out(
        `cell ${status.cell}: legacy fallback ${status.enabled ? 'ON' : 'off'}${status.forced ? ', forced by KEYHOLE_LEGACY_FALLBACK' : last}; ${status.legacySessionsLast24h} legacy session(s) in the last 24 h`,
      );
    }
    return 0;
  },
};
