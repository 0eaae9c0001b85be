import { Module } from '@nestjs/common';
import { CellDatabases } from './cell-databases';
import { CellsService } from './cells.service';

/** Cell registry and per-cell database pools. Needs `DbModule.forControl` and `ConfigModule`. */
@Module({
  providers: [CellDatabases, CellsService],
  exports: [CellDatabases, CellsService],
})
export class CellsModule {}
