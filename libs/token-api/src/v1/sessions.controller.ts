import { Controller, Delete, Get, HttpCode, Param, Query } from '@nestjs/common';
import { z } from 'zod';
import { CellsService } from '@keyhole/cells';
import { SessionsService } from '@keyhole/tokens';
import { Roles } from '../http/auth.guard';
import { ZodValidationPipe } from '../http/zod-validation.pipe';
import { cellNameSchema, instanceUuidSchema, listSessionsQuerySchema, sessionIdSchema } from './schemas';

const cellParam = new ZodValidationPipe(cellNameSchema, 'path', 'cell');

/** Console sessions recorded by a cell's proxies: operators list and end them. */
@Controller('v1/cells/:cell')
export class SessionsController {
  constructor(
    private readonly sessions: SessionsService,
    private readonly cells: CellsService,
  ) {}

  @Get('sessions')
  async list(
    @Param('cell', cellParam) cell: string,
    @Query(new ZodValidationPipe(listSessionsQuerySchema, 'query')) query: z.output<typeof listSessionsQuerySchema>,
  ) {
    const sessions = await this.sessions.list(cell, {
      liveOnly: query.live ?? true,
      instanceUuid: query.instanceUuid,
      limit: query.limit ?? 100,
    });
    return { sessions };
  }

  @Delete('sessions/:id')
  @HttpCode(204)
  async end(
    @Param('cell', cellParam) cell: string,
    @Param('id', new ZodValidationPipe(sessionIdSchema, 'path', 'id')) id: string,
  ): Promise<void> {
    await this.cells.get(cell);
    await this.sessions.end(cell, id);
  }

  @Get('instances/:instanceUuid/serial-ports')
  @Roles('agent', 'operator')
  async serialPorts(
    @Param('cell', cellParam) cell: string,
    @Param('instanceUuid', new ZodValidationPipe(instanceUuidSchema, 'path', 'instanceUuid')) instanceUuid: string,
  ) {
    await this.cells.get(cell);
    return { ports: await this.sessions.serialPorts(cell, instanceUuid) };
  }
}
