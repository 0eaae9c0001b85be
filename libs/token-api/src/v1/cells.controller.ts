import { Body, Controller, Delete, Get, Param, Post } from '@nestjs/common';
import { z } from 'zod';
import { CellsService } from '@keyhole/cells';
import type { Principal } from '@keyhole/credentials';
import { assertUnscoped, CurrentPrincipal } from '../http/auth.guard';
import { ZodValidationPipe } from '../http/zod-validation.pipe';
import { cellNameSchema, registerCellBodySchema } from './schemas';

/** The cells of the deployment (operators only). Database URLs go in, never out. */
@Controller('v1/cells')
export class CellsController {
  constructor(private readonly cells: CellsService) {}

  @Post()
  register(
    @CurrentPrincipal() principal: Principal,
    @Body(new ZodValidationPipe(registerCellBodySchema, 'body')) body: z.output<typeof registerCellBodySchema>,
  ) {
    assertUnscoped(principal);
    return this.cells.register(body);
  }

  @Get()
  async list(@CurrentPrincipal() principal: Principal) {
    const cells = await this.cells.list();
    return { cells: cells.filter((cell) => principal.cellName === null || cell.name === principal.cellName) };
  }

  @Get(':cell')
  get(@Param('cell', new ZodValidationPipe(cellNameSchema, 'path', 'cell')) cell: string) {
    return this.cells.get(cell);
  }

  @Delete(':cell')
  remove(@CurrentPrincipal() principal: Principal, @Param('cell', new ZodValidationPipe(cellNameSchema, 'path', 'cell')) cell: string) {
    assertUnscoped(principal);
    return this.cells.remove(cell);
  }
}
