import { CellsService } from '@keyhole/cells';
import { cellNameSchema } from '@keyhole/core';
import { LegacyImportService } from '@keyhole/tokens';
import { Command, parseFlags, UsageError, validated } from './command';

export const legacyImportCommand: Command = {
  name: 'legacy import',
  usage: 'keyhole legacy import (--cell NAME | --all)',
  summary: 'copy every live legacy Redis token into a cell database (hashed, same expiry), so the fallback can go off',
  async run({ args, services, out }) {
    const { values } = parseFlags(args, { cell: { type: 'string' }, all: { type: 'boolean' } });
    if ((values.cell === undefined) === !values.all) {
      throw new UsageError('give exactly one of --cell NAME and --all');
    }
    const app = await services();
    const cells = values.all
      ? (await app.get(CellsService).list()).map((cell) => cell.name)
      : [validated(cellNameSchema, values.cell, '--cell')];
    for (const cell of cells) {
      const result = await app.get(LegacyImportService).importInto(cell);
      out(
        `cell ${cell}: ${result.seen} live legacy token(s): ${result.imported} imported, ${result.alreadyPresent} already present, ${result.skipped} of an unserved type skipped`,
      );
    }
    return 0;
  },
};
