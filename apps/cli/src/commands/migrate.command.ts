import { CellsService } from '@keyhole/cells';
import { CellMigration, ControlDatabase, migrateDatabase, NOVA_EXPIRES_INDEX_SQL } from '@keyhole/db';
import { Command, parseFlags } from './command';

export const migrateCommand: Command = {
  name: 'migrate',
  usage: 'keyhole migrate',
  summary: 'bring the control database and every registered cell database to the latest schema',
  async run({ args, services, out }) {
    parseFlags(args, {});
    const app = await services();
    const control = await migrateDatabase(app.get(ControlDatabase).dataSource);
    out(`control: ${control.length ? `applied ${control.join(', ')}` : 'up to date'}`);
    const cells = await app.get(CellsService).migrateAll();
    for (const [cell, run] of Object.entries(cells)) {
      out(`cell ${cell}: ${describeCellMigration(run)}`);
    }
    return 0;
  },
};

/** One line per cell: the migrations, the tables moved from an older layout, the tokens adopted into Nova's table. */
function describeCellMigration(run: CellMigration): string {
  const parts: string[] = [];
  if (run.movedTables.length > 0) {
    parts.push(`moved ${run.movedTables.length} tables of an older keyhole into the keyhole schema`);
  }
  if (run.applied.length > 0) {
    parts.push(`applied ${run.applied.join(', ')}`);
  }
  if (run.adoption && run.adoption.adopted + run.adoption.expired > 0) {
    parts.push(
      `adopted ${run.adoption.adopted} tokens into Nova's console_auth_tokens` +
        (run.adoption.expired > 0 ? ` (dropped ${run.adoption.expired} expired)` : ''),
    );
  }
  if (run.adoption?.expiresIndex === 'not owner') {
    parts.push(
      `Nova's console_auth_tokens has no expires index (keyhole's role does not own it); as its owner run: ${NOVA_EXPIRES_INDEX_SQL}`,
    );
  }
  return parts.length > 0 ? parts.join('; ') : 'up to date';
}
