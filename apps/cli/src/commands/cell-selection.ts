import { INestApplicationContext } from '@nestjs/common';
import { CellsService } from '@keyhole/cells';
import { cellNameSchema } from '@keyhole/core';
import { CommandContext, UsageError, validated } from './command';

/**
 * The cells a command acts on, from exactly one of `--cell NAME` and `--all` (every registered
 * cell), with the services it opened to find them.
 */
export async function selectCells(
  values: { cell?: string; all?: boolean },
  services: CommandContext['services'],
): Promise<{ app: INestApplicationContext; cells: string[] }> {
  if ((values.cell === undefined) === !values.all) {
    throw new UsageError('give exactly one of --cell NAME and --all');
  }
  const app = await services();
  const cells = values.all
    ? (await app.get(CellsService).list()).map((cell) => cell.name)
    : [validated(cellNameSchema, values.cell, '--cell')];
  return { app, cells };
}
