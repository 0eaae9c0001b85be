import { CellsService } from '@keyhole/cells';
import { ControlDatabase, migrateDatabase } from '@keyhole/db';
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
    for (const [cell, applied] of Object.entries(cells)) {
      out(`cell ${cell}: ${applied.length ? `applied ${applied.join(', ')}` : 'up to date'}`);
    }
    return 0;
  },
};
