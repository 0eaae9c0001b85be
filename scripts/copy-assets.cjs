// What apps and libs read at run time beside their code (Lua scripts, browser pages) is not
// TypeScript, so tsc does not emit it: copy it into dist/ at the same relative paths.
// Run by `npm run build` after tsc.
const { cpSync, readdirSync } = require('node:fs');
const { join } = require('node:path');

const ASSET = /\.(lua|html|js|css)$/;

for (const root of ['apps', 'libs']) {
  for (const app of readdirSync(root)) {
    const source = join(root, app, 'src');
    for (const file of readdirSync(source, { recursive: true })) {
      if (ASSET.test(file)) cpSync(join(source, file), join('dist', source, file));
    }
  }
}
