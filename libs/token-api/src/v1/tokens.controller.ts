import { Body, Controller, Delete, Get, HttpCode, Param, Post, Query } from '@nestjs/common';
import { z } from 'zod';
import { KeyholeError } from '@keyhole/core';
import { CellsService } from '@keyhole/cells';
import type { Principal } from '@keyhole/credentials';
import { ConsoleAuthToken, ObjectVersion, PurgeService, TokensService } from '@keyhole/tokens';
import { RoutesService } from '@keyhole/upstream';
import { assertCellAccess, CurrentPrincipal, Roles } from '../http/auth.guard';
import { RequestedObjectVersion } from '../http/object-version';
import { ZodValidationPipe } from '../http/zod-validation.pipe';
import {
  cellNameSchema,
  instanceUuidSchema,
  introspectBodySchema,
  issueTokenBodySchema,
  listTokensQuerySchema,
  purgeBodySchema,
  tokenIdSchema,
} from './schemas';

const DEFAULT_LIST_LIMIT = 100;

const cellParam = new ZodValidationPipe(cellNameSchema, 'path', 'cell');

/** Console tokens of a cell: issued by agents, managed by operators. */
@Controller('v1')
export class TokensController {
  constructor(
    private readonly tokens: TokensService,
    private readonly cells: CellsService,
    private readonly purges: PurgeService,
    private readonly routes: RoutesService,
  ) {}

  @Post('cells/:cell/tokens')
  @Roles('agent', 'operator')
  async issue(
    @CurrentPrincipal() principal: Principal,
    @Param('cell', cellParam) cell: string,
    @Body(new ZodValidationPipe(issueTokenBodySchema, 'body')) body: z.output<typeof issueTokenBodySchema>,
    @RequestedObjectVersion() version: ObjectVersion,
  ) {
    // The routes are the allow-list: no token for a destination the proxies would refuse to dial.
    this.routes.assertRoutable(body.host, body.port);
    const issued = await this.tokens.authorize(cell, { ...body, issuedBy: principal.credentialId });
    return { ...issued.toPrimitive(version), cell, token: issued.token, accessUrl: issued.accessUrl };
  }

  @Get('cells/:cell/tokens')
  async list(
    @Param('cell', cellParam) cell: string,
    @Query(new ZodValidationPipe(listTokensQuerySchema, 'query')) query: z.output<typeof listTokensQuerySchema>,
    @RequestedObjectVersion() version: ObjectVersion,
  ) {
    const limit = query.limit ?? DEFAULT_LIST_LIMIT;
    const found = await this.tokens.list(cell, { instanceUuid: query.instanceUuid, afterId: query.after, limit });
    return {
      tokens: found.map((token) => token.toPrimitive(version)),
      nextAfter: found.length === limit ? found[found.length - 1].id : null,
    };
  }

  @Get('cells/:cell/tokens/:id')
  async get(
    @Param('cell', cellParam) cell: string,
    @Param('id', new ZodValidationPipe(tokenIdSchema, 'path', 'id')) id: number,
    @RequestedObjectVersion() version: ObjectVersion,
  ) {
    return (await this.tokens.get(cell, id)).toPrimitive(version);
  }

  @Delete('cells/:cell/tokens/:id')
  @Roles('agent', 'operator')
  @HttpCode(204)
  async revoke(
    @Param('cell', cellParam) cell: string,
    @Param('id', new ZodValidationPipe(tokenIdSchema, 'path', 'id')) id: number,
  ): Promise<void> {
    await this.tokens.revokeById(cell, id);
  }

  @Delete('cells/:cell/instances/:instanceUuid/tokens')
  @Roles('agent', 'operator')
  async revokeInstance(
    @Param('cell', cellParam) cell: string,
    @Param('instanceUuid', new ZodValidationPipe(instanceUuidSchema, 'path', 'instanceUuid')) instanceUuid: string,
  ) {
    // An unknown cell must be 404 even though an instance without tokens is not an error.
    await this.cells.get(cell);
    const ids = await this.tokens.revokeByInstance(cell, instanceUuid);
    return { revoked: ids.length, ids };
  }

  @Post('cells/:cell/tokens/purge')
  @Roles('agent', 'operator')
  @HttpCode(200)
  async purge(
    @CurrentPrincipal() principal: Principal,
    @Param('cell', cellParam) cell: string,
    @Body(new ZodValidationPipe(purgeBodySchema, 'body')) body: z.output<typeof purgeBodySchema>,
  ) {
    if (principal.role === 'agent' && body.host === undefined) {
      throw new KeyholeError('FORBIDDEN', 'Agents purge the expired tokens of one host: name it in "host"');
    }
    await this.cells.get(cell);
    const result = await this.purges.purgeCell(cell, { host: body.host });
    if (!result.ran) {
      throw new KeyholeError('PURGE_IN_PROGRESS', 'Another purge of this cell is running; try again when it is done', {
        details: { cell },
      });
    }
    return { purged: result.tokens, sessions: result.sessions };
  }

  /**
   * What a presented token grants (Nova's os-console-auth-tokens), looked up in the cells the
   * caller may see. The token travels in the body, never in a URL that proxies would log.
   */
  @Post('tokens/introspect')
  @HttpCode(200)
  async introspect(
    @CurrentPrincipal() principal: Principal,
    @Body(new ZodValidationPipe(introspectBodySchema, 'body')) body: z.output<typeof introspectBodySchema>,
    @RequestedObjectVersion() version: ObjectVersion,
  ) {
    let cellNames: string[];
    if (body.cell !== undefined) {
      assertCellAccess(principal, body.cell);
      await this.cells.get(body.cell);
      cellNames = [body.cell];
    } else {
      cellNames = principal.cellName !== null ? [principal.cellName] : (await this.cells.list()).map((c) => c.name);
    }
    const found = await this.tokens.introspect(cellNames, body.token);
    return { cell: found.cellName, console: novaConsole(found), authorization: found.toPrimitive(version) };
  }
}

/** The `console` object of Nova's GET /os-console-auth-tokens/{token}. */
function novaConsole(token: ConsoleAuthToken) {
  const row = token.row;
  return {
    instance_uuid: row.instanceUuid,
    host: row.host,
    port: row.port,
    internal_access_path: row.internalAccessPath,
    ...(row.tlsPort !== null ? { tls_port: row.tlsPort } : {}),
  };
}
