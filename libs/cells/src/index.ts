export * from './cell-database';
export * from './cell-databases';
export * from './cells.errors';
export * from './cells.service';
export * from './cells.module';
