import type { FastifyInstance, FastifyRequest } from 'fastify';
import { KeyholeError } from '@keyhole/core';

/**
 * The only body parser of the API: Fastify's own JSON parser (secure-json-parse: a body with a
 * `__proto__` or `constructor.prototype` key is refused as invalid JSON), taking only an object or
 * an array (`strict`, as Express's parser did), in a UTF charset. The body limit is the adapter's
 * `bodyLimit`. An empty body is `{}`. Compressed bodies are refused (415): an agent's JSON is small,
 * and a decompressor in front of the parser is one more thing to bound. Every refusal is a
 * KeyholeError or a Fastify error that the error filter maps, so it is answered like any other.
 */
export function registerJsonBodyParser(fastify: FastifyInstance): void {
  // No text/plain (Fastify's other default parser): only JSON is a body.
  fastify.removeAllContentTypeParsers();
  fastify.addHook('onRequest', (request: FastifyRequest, _reply, done: (error?: Error) => void) => {
    const encoding = request.headers['content-encoding']?.trim().toLowerCase();
    done(encoding === undefined || encoding === 'identity' ? undefined : unsupportedEncoding());
  });
  const parseJson = fastify.getDefaultJsonParser('error', 'error');
  fastify.addContentTypeParser(
    'application/json',
    { parseAs: 'buffer' },
    (request: FastifyRequest, body: Buffer, done: (error: Error | null, body?: unknown) => void) => {
      let text: string;
      try {
        text = decode(body, request.headers['content-type'] ?? '');
      } catch (error) {
        done(error as Error);
        return;
      }
      const first = text.trimStart()[0];
      if (first === undefined) {
        done(null, {});
      } else if (first !== '{' && first !== '[') {
        done(new KeyholeError('INVALID_INPUT', 'The request body is not valid JSON'));
      } else {
        void parseJson(request, text, done);
      }
    },
  );
}

function decode(body: Buffer, contentType: string): string {
  const charset = /;\s*charset\s*=\s*"?([^";\s]+)"?/i.exec(contentType)?.[1]?.toLowerCase() ?? 'utf-8';
  if (charset === 'utf-8') {
    return body.toString('utf8');
  }
  if (!charset.startsWith('utf-')) {
    throw unsupportedEncoding();
  }
  try {
    return new TextDecoder(charset).decode(body);
  } catch {
    throw unsupportedEncoding();
  }
}

/** A content encoding or charset the parser does not read. */
function unsupportedEncoding(): KeyholeError {
  return new KeyholeError('UNSUPPORTED_MEDIA_TYPE', 'The request body encoding is not supported; send uncompressed JSON in UTF-8');
}
