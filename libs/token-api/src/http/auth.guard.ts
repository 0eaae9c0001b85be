import { CanActivate, ExecutionContext, Injectable, SetMetadata, createParamDecorator } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import type { FastifyRequest } from 'fastify';
import { cellNameSchema, KeyholeError } from '@keyhole/core';
import { CredentialsService, Principal } from '@keyhole/credentials';
import type { CredentialRole } from '@keyhole/db';
import { verifiedClientCommonName } from '@keyhole/tls';
import { principalOf, setPrincipal } from './request-context.hooks';
import { ZodValidationPipe } from './zod-validation.pipe';

const ROLES = 'keyhole:roles';
/** The validation every handler applies to its `:cell`; the guard applies it first. */
const CELL_PARAMETER = new ZodValidationPipe(cellNameSchema, 'path', 'cell');
const PUBLIC = 'keyhole:public';

/** Roles allowed to call a handler (default: operators only). */
export const Roles = (...roles: CredentialRole[]) => SetMetadata(ROLES, roles);
/** A handler anyone may call: health probes and the OpenAPI document. */
export const Public = () => SetMetadata(PUBLIC, true);

/** The verified caller of the current request. */
export const CurrentPrincipal = createParamDecorator((_: unknown, context: ExecutionContext): Principal => {
  const principal = principalOf(context.switchToHttp().getRequest<FastifyRequest>());
  if (!principal) {
    throw new KeyholeError('UNAUTHENTICATED', 'A valid API key is required (Authorization: Bearer khk_...)');
  }
  return principal;
});

/**
 * Authenticates every request with its `Authorization: Bearer <API key>` header (or, without one,
 * a verified client certificate), then checks cell
 * scope, then the handler's roles. A missing or bad key is 401 whatever the reason; a good key
 * scoped to another cell, or of the wrong role, is 403. Too many failures for a key id or from a
 * client address are 429 (CredentialsService.authenticate).
 *
 * Cell scope is enforced here, for every route, from the route's own `:cell` parameter: a handler
 * cannot forget it, and a new `:cell` route is scoped the moment it exists. Only a cell that is not
 * in the path (a request body, a stored credential) is checked by the handler that reads it, with
 * `assertCellAccess`.
 */
@Injectable()
export class AuthGuard implements CanActivate {
  constructor(
    private readonly reflector: Reflector,
    private readonly credentials: CredentialsService,
  ) {}

  /**
   * The API key of the Authorization header; without one, a verified client certificate whose
   * subject CN is a credential id (KEYHOLE_API_TLS_CLIENT_CA_FILE). A request with both is
   * authenticated by its key.
   */
  private authenticate(request: FastifyRequest): Promise<Principal> {
    const key = bearerToken(request.headers.authorization);
    const certificateId = request.headers.authorization === undefined ? verifiedClientCommonName(request.raw.socket) : null;
    if (certificateId !== null) {
      return this.credentials.authenticateCertificate(certificateId);
    }
    // request.ip is the client after KEYHOLE_TRUSTED_PROXIES (Fastify's trustProxy): failures are limited per client.
    return this.credentials.authenticate(key, request.ip ?? null);
  }

  async canActivate(context: ExecutionContext): Promise<boolean> {
    const targets = [context.getHandler(), context.getClass()];
    if (this.reflector.getAllAndOverride<boolean>(PUBLIC, targets)) {
      return true;
    }
    const request = context.switchToHttp().getRequest<FastifyRequest>();
    const principal = await this.authenticate(request);
    setPrincipal(request, principal);
    const cell = cellParameterOf(request);
    if (cell !== undefined) {
      // A path value that is no cell name is refused as the handler's validation would refuse it
      // (400 naming `cell`), before the scope check, whose 403 names the cell: never the raw path.
      assertCellAccess(principal, CELL_PARAMETER.transform(cell));
    }
    const roles = this.reflector.getAllAndOverride<CredentialRole[] | undefined>(ROLES, targets) ?? ['operator'];
    if (!roles.includes(principal.role)) {
      throw new KeyholeError('FORBIDDEN', `This operation needs the role ${roles.join(' or ')}`, {
        details: { role: principal.role },
      });
    }
    return true;
  }
}

/** Refuses a principal scoped to another cell. */
export function assertCellAccess(principal: Principal, cellName: string): void {
  if (principal.cellName !== null && principal.cellName !== cellName) {
    throw new KeyholeError('FORBIDDEN', `This credential may only act on cell '${principal.cellName}'`, {
      details: { cell: cellName },
    });
  }
}

/** Refuses a principal scoped to a cell for deployment-wide operations. */
export function assertUnscoped(principal: Principal): void {
  if (principal.cellName !== null) {
    throw new KeyholeError('FORBIDDEN', 'This operation needs an operator credential for every cell');
  }
}

/** The route's `:cell` parameter, as Fastify decoded it (the same value the handler receives). */
function cellParameterOf(request: FastifyRequest): string | undefined {
  const params = request.params as Record<string, unknown> | undefined;
  const cell = params?.cell;
  return typeof cell === 'string' ? cell : undefined;
}

function bearerToken(header: string | undefined): string | undefined {
  if (!header) {
    return undefined;
  }
  const match = /^Bearer +(\S+)\s*$/i.exec(header);
  return match ? match[1] : undefined;
}
