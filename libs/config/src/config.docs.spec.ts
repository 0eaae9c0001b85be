import { readFileSync } from 'node:fs';
import path from 'node:path';
import { renderSettingsTable, updateConfigurationDocs } from './config.docs';
import { ENVIRONMENT_SCHEMA, SETTING_SECTIONS } from './config.schema';

describe('configuration docs', () => {
  it("README.md's configuration tables are what the schema generates (else run npm run docs:config)", () => {
    const readme = readFileSync(path.resolve(__dirname, '../../../README.md'), 'utf8');
    expect(updateConfigurationDocs(readme)).toBe(readme);
  });

  it('documents every variable once, with the default the schema applies', () => {
    const tables = SETTING_SECTIONS.map((section) => renderSettingsTable(section)).join('\n');
    const documented = [...tables.matchAll(/^\| `(KEYHOLE_[A-Z0-9_]+)` \| ([^|]+) \|/gm)];
    expect(documented.map(([, name]) => name).sort()).toEqual(Object.keys(ENVIRONMENT_SCHEMA.shape).sort());
    const defaults = Object.fromEntries(documented.map(([, name, shown]) => [name, shown.trim()]));
    expect(defaults).toMatchObject({
      KEYHOLE_DATABASE_URL: '(none)',
      KEYHOLE_DB_POOL_SIZE: '`10`',
      KEYHOLE_TRUSTED_PROXIES: '(empty)',
      KEYHOLE_PROXY_CONSOLE_TYPES: '`novnc,spice-html5,serial`',
      KEYHOLE_PROXY_ALLOWED_ORIGINS: '(empty)',
      KEYHOLE_LEGACY_KEY_PREFIX: '(empty)',
      KEYHOLE_PROXY_INSTANCE: '`<hostname>:<port>`',
    });
  });

  it('refuses a README without the markers rather than losing a table', () => {
    expect(() => updateConfigurationDocs('# keyhole\n')).toThrow('<!-- config:general -->');
  });
});
