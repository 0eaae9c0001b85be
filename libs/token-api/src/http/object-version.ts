import { createParamDecorator, ExecutionContext } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { KeyholeError } from '@keyhole/core';
import { CURRENT_OBJECT_VERSION, isObjectVersion, ObjectVersion, OBJECT_VERSIONS } from '@keyhole/tokens';

/** Request header naming the ConsoleAuthToken object version the client understands. */
export const OBJECT_VERSION_HEADER = 'Keyhole-Object-Version';

/**
 * The object version asked for (`Keyhole-Object-Version: 1.2`), the current one when absent;
 * echoed in the response header of the same name.
 */
export const RequestedObjectVersion = createParamDecorator((_: unknown, context: ExecutionContext): ObjectVersion => {
  const http = context.switchToHttp();
  const asked = http.getRequest<FastifyRequest>().headers[OBJECT_VERSION_HEADER.toLowerCase()];
  const version = asked === undefined ? CURRENT_OBJECT_VERSION : String(asked).trim();
  if (!isObjectVersion(version)) {
    throw new KeyholeError('UNSUPPORTED_OBJECT_VERSION', `Unsupported object version; supported: ${OBJECT_VERSIONS.join(', ')}`, {
      details: { supported: [...OBJECT_VERSIONS] },
    });
  }
  void http.getResponse<FastifyReply>().header(OBJECT_VERSION_HEADER, version);
  return version;
});
