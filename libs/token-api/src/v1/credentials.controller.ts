import { Body, Controller, Delete, Get, HttpCode, Param, Post, Query } from '@nestjs/common';
import { z } from 'zod';
import { CredentialsService, Principal } from '@keyhole/credentials';
import { assertCellAccess, CurrentPrincipal } from '../http/auth.guard';
import { ZodValidationPipe } from '../http/zod-validation.pipe';
import { createCredentialBodySchema, credentialIdSchema, listCredentialsQuerySchema } from './schemas';

/**
 * API credentials (operators only). An operator scoped to a cell manages the credentials of that
 * cell only; an operator of every cell manages all.
 */
@Controller('v1/credentials')
export class CredentialsController {
  constructor(private readonly credentials: CredentialsService) {}

  @Post()
  create(
    @CurrentPrincipal() principal: Principal,
    @Body(new ZodValidationPipe(createCredentialBodySchema, 'body')) body: z.output<typeof createCredentialBodySchema>,
  ) {
    const cellName = body.cell ?? null;
    if (principal.cellName !== null) {
      assertCellAccess(principal, cellName ?? '');
    }
    return this.credentials.create({ name: body.name, role: body.role, cellName });
  }

  @Get()
  async list(
    @CurrentPrincipal() principal: Principal,
    @Query(new ZodValidationPipe(listCredentialsQuerySchema, 'query')) query: z.output<typeof listCredentialsQuerySchema>,
  ) {
    const credentials = await this.credentials.list({
      includeRevoked: query.includeRevoked ?? false,
      cellName: principal.cellName,
    });
    return { credentials };
  }

  @Delete(':id')
  @HttpCode(204)
  async revoke(
    @CurrentPrincipal() principal: Principal,
    @Param('id', new ZodValidationPipe(credentialIdSchema, 'path', 'id')) id: string,
  ): Promise<void> {
    if (principal.cellName !== null) {
      const target = await this.credentials.get(id);
      assertCellAccess(principal, target.cell ?? '');
    }
    await this.credentials.revoke(id);
  }
}
