'use strict';
// npm run docs:config: rewrites README.md's configuration tables from libs/config/src/config.schema.ts
// (names, defaults, descriptions). libs/config/src/config.docs.spec.ts fails when they differ.
// swc (a dev dependency, used by jest) transpiles the config lib's TypeScript on require.
const fs = require('node:fs');
const path = require('node:path');
const swc = require('@swc/core');

require.extensions['.ts'] = function compileTypeScript(module, filename) {
  const source = fs.readFileSync(filename, 'utf8');
  const { code } = swc.transformSync(source, {
    jsc: { parser: { syntax: 'typescript' }, target: 'es2022' },
    module: { type: 'commonjs' },
    filename,
  });
  module._compile(code, filename);
};

const { updateConfigurationDocs } = require('../libs/config/src/config.docs.ts');
const readmePath = path.resolve(__dirname, '../README.md');
const readme = fs.readFileSync(readmePath, 'utf8');
const updated = updateConfigurationDocs(readme);
if (updated === readme) {
  process.stdout.write('README.md: configuration tables already match the schema\n');
} else {
  fs.writeFileSync(readmePath, updated);
  process.stdout.write('README.md: configuration tables rewritten from the schema\n');
}
