'use strict';
// Runs the benchmark's TypeScript straight from bench/ (no build step, no output directory):
// swc (already a dev dependency, used by jest) transpiles each .ts file to CommonJS on require.
// Type checking is `npm run typecheck`, which covers bench/ too.
//
//   node bench/run.cjs [options]            the orchestrator (what `npm run bench` runs)
//   node bench/run.cjs --role=NAME [...]    a helper (loadgen, upstreams; compare, report: tools)
const fs = require('node:fs');
const path = require('node:path');
const swc = require('@swc/core');

const swcOptions = {
  jsc: { parser: { syntax: 'typescript' }, target: 'es2022' },
  module: { type: 'commonjs' },
  sourceMaps: 'inline',
};
require.extensions['.ts'] = function compileTypeScript(module, filename) {
  const source = fs.readFileSync(filename, 'utf8');
  const { code } = swc.transformSync(source, { ...swcOptions, filename });
  module._compile(code, filename);
};
process.setSourceMapsEnabled?.(true);

const ROLES = {
  main: './main.ts',
  loadgen: './loadgen.ts',
  upstreams: './upstreams.ts',
  compare: './compare.ts',
  report: './report.ts',
};
const roleArgument = process.argv.find((argument) => argument.startsWith('--role='));
const role = roleArgument ? roleArgument.slice('--role='.length) : 'main';
if (!ROLES[role]) {
  process.stderr.write(`unknown --role=${role} (one of ${Object.keys(ROLES).join(', ')})\n`);
  process.exit(2);
}
require(path.join(__dirname, ROLES[role]));
