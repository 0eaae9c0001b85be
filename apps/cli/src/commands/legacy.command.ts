import { LegacyImportService } from '@keyhole/tokens';
import { selectCells } from './cell-selection';
import { Command, parseFlags } from './command';

export const legacyImportCommand: Command = {
  name: 'legacy import',
  usage: 'keyhole legacy import (--cell NAME | --all)',
  summary: 'copy every live legacy Redis token into a cell database (hashed, same expiry), so the fallback can go off',
  async run({ args, services, out }) {
    const { values } = parseFlags(args, { cell: { type: 'string' }, all: { type: 'boolean' } });
    const { app, cells } = await selectCells(values, services);
    for (const cell of cells) {
      const result = await app.get(LegacyImportService).importInto(cell);
      out(
        `cell ${cell}: ${result.seen} live legacy token(s): ${result.imported} imported, ${result.alreadyPresent} already present, ${result.skipped} of an unserved type skipped`,
      );
    }
    return 0;
  },
};
