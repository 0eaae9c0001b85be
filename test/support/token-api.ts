import { request as httpRequest } from 'node:http';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { Test } from '@nestjs/testing';
import { KeyholeConfig } from '@keyhole/config';
import { CLOCK, Clock } from '@keyhole/core';
import { TOKEN_GENERATOR, TokenGenerator } from '@keyhole/tokens';
import { configureTokenApi, createTokenApiAdapter, nestApplicationOptions, TokenApiModule } from '@keyhole/token-api';
import { captureLogs } from './log-capture';

export interface RunningTokenApi {
  app: NestFastifyApplication;
  baseUrl: string;
  /** Every route the HTTP server serves (method and URL template), as Fastify registered them. */
  routes: { method: string; url: string }[];
  logs: () => string;
  close: () => Promise<void>;
}

/**
 * Boots the real token API (same module and HTTP configuration as production) on a free port, with
 * optional clock and token generator overrides, logging into memory.
 */
export async function startTokenApi(
  config: KeyholeConfig,
  overrides: { clock?: Clock; tokenGenerator?: TokenGenerator } = {},
): Promise<RunningTokenApi> {
  const capture = captureLogs('keyhole-api');
  const builder = Test.createTestingModule({ imports: [TokenApiModule.forRoot(config)] });
  if (overrides.clock) {
    builder.overrideProvider(CLOCK).useValue(overrides.clock);
  }
  if (overrides.tokenGenerator) {
    builder.overrideProvider(TOKEN_GENERATOR).useValue(overrides.tokenGenerator);
  }
  const moduleRef = await builder.compile();
  const app = moduleRef.createNestApplication<NestFastifyApplication>(
    createTokenApiAdapter(config),
    nestApplicationOptions(capture.logger),
  );
  configureTokenApi(app, capture.logger);
  const routes: { method: string; url: string }[] = [];
  // Nest registers its routes when the app starts listening: record each as it is added.
  app
    .getHttpAdapter()
    .getInstance()
    .addHook('onRoute', (route) => {
      for (const method of [route.method].flat()) {
        routes.push({ method, url: route.url });
      }
    });
  await app.listen(0, '127.0.0.1');
  const address = app.getHttpServer().address() as { port: number };
  return {
    app,
    baseUrl: `http://127.0.0.1:${address.port}`,
    routes,
    logs: capture.text,
    close: () => app.close(),
  };
}

/**
 * A JSON request with an optional API key; returns status, headers and the parsed body. `from`
 * sends it from that local address (any of 127.0.0.0/8), as a distinct client would.
 */
export async function call(
  baseUrl: string,
  method: string,
  path: string,
  options: { key?: string; body?: unknown; rawBody?: string; headers?: Record<string, string>; from?: string } = {},
): Promise<{ status: number; body: any; headers: Headers }> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.key) {
    headers.authorization = `Bearer ${options.key}`;
  }
  let body: string | undefined;
  if (options.rawBody !== undefined) {
    body = options.rawBody;
  } else if (options.body !== undefined) {
    body = JSON.stringify(options.body);
    headers['content-type'] ??= 'application/json';
  }
  const response =
    options.from === undefined
      ? await fetch(`${baseUrl}${path}`, { method, headers, body })
      : await requestFrom(options.from, `${baseUrl}${path}`, { method, headers, body });
  const text = await response.text();
  let parsed: unknown = undefined;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
  }
  return { status: response.status, body: parsed, headers: response.headers };
}

/** What `call` reads of a response, for a request sent with node:http from a chosen local address. */
function requestFrom(
  localAddress: string,
  url: string,
  init: { method: string; headers: Record<string, string>; body: string | undefined },
): Promise<{ status: number; headers: Headers; text: () => Promise<string> }> {
  return new Promise((resolve, reject) => {
    const outgoing = httpRequest(url, { method: init.method, headers: init.headers, localAddress, agent: false }, (incoming) => {
      const chunks: Buffer[] = [];
      incoming.on('data', (chunk: Buffer) => chunks.push(chunk));
      incoming.on('error', reject);
      incoming.on('end', () => {
        const headers = new Headers();
        for (const [name, value] of Object.entries(incoming.headers)) {
          for (const item of [value ?? []].flat()) {
            headers.append(name, item);
          }
        }
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: incoming.statusCode ?? 0, headers, text: async () => text });
      });
    });
    outgoing.on('error', reject);
    outgoing.end(init.body);
  });
}
