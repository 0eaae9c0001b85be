import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Readable } from 'node:stream';
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';
import { KeyholeError } from '@keyhole/core';

/** Content encodings a client may compress a body with (as Express's body parser read them). */
const DECODERS: Record<string, (() => NodeJS.ReadWriteStream) | null> = {
  identity: null,
  gzip: createGunzip,
  deflate: createInflate,
  br: createBrotliDecompress,
};

/**
 * The only body parser of the API: JSON objects and arrays (`strict`, as before), in a UTF
 * charset, optionally gzip/deflate/br-encoded. The configured body limit applies to the decoded
 * body (Fastify counts the bytes that reach the parser). An empty body is `{}`. Every refusal is a
 * KeyholeError, so the error filter answers it like any other.
 */
export function registerJsonBodyParser(fastify: FastifyInstance): void {
  fastify.removeAllContentTypeParsers();
  fastify.addHook('preParsing', (request: FastifyRequest, _reply, payload: Readable, done: (error: Error | null, payload?: Readable) => void) => {
    const encoding = (request.headers['content-encoding'] ?? 'identity').trim().toLowerCase();
    const decoder = DECODERS[encoding];
    if (decoder === undefined) {
      done(unsupportedEncoding());
      return;
    }
    if (decoder === null) {
      done(null, payload);
      return;
    }
    const decoded = payload.pipe(decoder()) as unknown as Readable;
    // Fastify compares what it received with Content-Length, which counts the encoded bytes.
    (decoded as Readable & { receivedEncodedLength?: number }).receivedEncodedLength = 0;
    payload.on('data', (chunk: Buffer) => {
      (decoded as Readable & { receivedEncodedLength: number }).receivedEncodedLength += chunk.length;
    });
    payload.on('error', (error) => decoded.destroy(error));
    done(null, decoded);
  });
  fastify.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request: FastifyRequest, body: Buffer, done: (error: Error | null, body?: unknown) => void) => {
    let text: string;
    try {
      text = decode(body, request.headers['content-type'] ?? '');
    } catch (error) {
      done(error as Error);
      return;
    }
    if (text.trim() === '') {
      done(null, {});
      return;
    }
    // Strict, as Express's parser: only an object or an array is a body.
    const first = text.trimStart()[0];
    let parsed: unknown;
    try {
      if (first !== '{' && first !== '[') throw new SyntaxError('not an object or array');
      parsed = JSON.parse(text);
    } catch {
      done(new KeyholeError('INVALID_INPUT', 'The request body is not valid JSON'));
      return;
    }
    done(null, parsed);
  });
}

function decode(body: Buffer, contentType: string): string {
  const charset = /;\s*charset\s*=\s*"?([^";\s]+)"?/i.exec(contentType)?.[1]?.toLowerCase() ?? 'utf-8';
  if (charset === 'utf-8') return body.toString('utf8');
  if (!charset.startsWith('utf-')) throw unsupportedEncoding();
  try {
    return new TextDecoder(charset).decode(body);
  } catch {
    throw unsupportedEncoding();
  }
}

/** An encoding or charset the parser does not read. */
function unsupportedEncoding(): KeyholeError {
  return new KeyholeError('UNSUPPORTED_MEDIA_TYPE', 'The request body encoding is not supported');
}
