import { LegacyImportService, skippedCount } from '@keyhole/tokens';
import { selectCells } from './cell-selection';
import { Command, parseFlags } from './command';

/** `keyhole legacy import`'s exit code when it finished but skipped entries (1 and 2 keep their general meaning). */
export const LEGACY_IMPORT_SKIPPED_EXIT_CODE = 3;

export const legacyImportCommand: Command = {
  name: 'legacy import',
  usage: 'keyhole legacy import (--cell NAME | --all)',
  summary:
    'copy every live legacy Redis token into a cell database (hashed, same expiry), so the fallback can go off; exits 3 when it skipped entries',
  async run({ args, services, out }) {
    const { values } = parseFlags(args, { cell: { type: 'string' }, all: { type: 'boolean' } });
    const { app, cells } = await selectCells(values, services);
    let skipped = 0;
    for (const cell of cells) {
      const result = await app.get(LegacyImportService).importInto(cell);
      skipped += skippedCount(result);
      // Counts only: never a token, key or address.
      out(
        `cell ${cell}: ${result.seen} legacy entr${result.seen === 1 ? 'y' : 'ies'}: ${result.imported} imported, ` +
          `${result.alreadyPresent} already present, ${skippedCount(result)} skipped (${result.skipped.expired} expired, ` +
          `${result.skipped.malformed} malformed, ${result.skipped['not-a-token']} not a token, ` +
          `${result.skipped['unserved-type']} of an unserved console type)`,
      );
    }
    // Done, but not everything came across: an operator (or a script) must look before switching the fallback off.
    return skipped > 0 ? LEGACY_IMPORT_SKIPPED_EXIT_CODE : 0;
  },
};
