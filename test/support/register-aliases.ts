import Module from 'node:module';
import path from 'node:path';

/**
 * Jest's moduleNameMapper does not apply to globalSetup/globalTeardown, which run outside the test
 * module system; this maps the tsconfig `paths` aliases there.
 */
const root = path.resolve(__dirname, '../..');
// eslint-disable-next-line @typescript-eslint/no-require-imports
const paths: Record<string, string[]> = require(path.join(root, 'tsconfig.json')).compilerOptions.paths;
type Resolve = (request: string, ...rest: unknown[]) => string;
const moduleWithResolve = Module as unknown as { _resolveFilename: Resolve };
const original = moduleWithResolve._resolveFilename;
moduleWithResolve._resolveFilename = function resolveAlias(request: string, ...rest: unknown[]): string {
  const target = paths[request]?.[0];
  return original.call(this, target ? path.join(root, target) : request, ...rest);
};
