import { Body, Controller, Get, Param, Put } from '@nestjs/common';
import { z } from 'zod';
import type { Principal } from '@keyhole/credentials';
import { FallbackService } from '@keyhole/tokens';
import { CellsService } from '@keyhole/cells';
import { CurrentPrincipal } from '../http/auth.guard';
import { ZodValidationPipe } from '../http/zod-validation.pipe';
import { cellNameSchema, setFallbackBodySchema } from './schemas';

const cellParam = new ZodValidationPipe(cellNameSchema, 'path', 'cell');

/** The legacy fallback flag of a cell (operators). */
@Controller('v1/cells/:cell/legacy-fallback')
export class FallbackController {
  constructor(
    private readonly fallback: FallbackService,
    private readonly cells: CellsService,
  ) {}

  @Get()
  async status(@Param('cell', cellParam) cell: string) {
    await this.cells.get(cell);
    return this.fallback.status(cell);
  }

  @Put()
  async set(
    @CurrentPrincipal() principal: Principal,
    @Param('cell', cellParam) cell: string,
    @Body(new ZodValidationPipe(setFallbackBodySchema, 'body')) body: z.output<typeof setFallbackBodySchema>,
  ) {
    await this.cells.get(cell);
    return this.fallback.set(cell, body.enabled, `credential ${principal.credentialId} (${principal.name})`);
  }
}
