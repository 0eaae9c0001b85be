import { z } from 'zod';
import { ENVIRONMENT_SCHEMA, SETTING_DOCUMENTATION, SETTING_SECTIONS, SettingSection } from './config.schema';

/**
 * README.md's configuration tables, generated from the schema (`npm run docs:config`): each sits
 * between `<!-- config:SECTION ... -->` and `<!-- /config:SECTION -->`; the rest of the README is
 * left as it is. A unit test fails when the README differs from what this generates.
 */
export function updateConfigurationDocs(readme: string): string {
  let updated = readme;
  for (const section of SETTING_SECTIONS) {
    const region = new RegExp(`(<!-- config:${section}(?: [^>]*)? -->\\n)[\\s\\S]*?(<!-- /config:${section} -->)`);
    if (!region.test(updated)) {
      throw new Error(`README.md lacks the markers <!-- config:${section} --> and <!-- /config:${section} -->`);
    }
    updated = updated.replace(region, (_match, start: string, end: string) => `${start}\n${renderSettingsTable(section)}\n\n${end}`);
  }
  return updated;
}

/** One section's settings as a Markdown table (variable, default, meaning), in schema order. */
export function renderSettingsTable(section: SettingSection): string {
  const rows = Object.entries(ENVIRONMENT_SCHEMA.shape).flatMap(([name, schema]) => {
    const documentation = SETTING_DOCUMENTATION.get(schema);
    if (!documentation) {
      throw new Error(`${name}: no documentation in config.schema.ts`);
    }
    if (documentation.section !== section) {
      return [];
    }
    return [`| \`${name}\` | ${documentation.shownDefault ?? shownDefault(schema)} | ${documentation.description} |`];
  });
  return ['| variable | default | meaning |', '| --- | --- | --- |', ...rows].join('\n');
}

/** The schema's default as the README shows it: `value`, `a,b` for a list, (empty), or (none). */
function shownDefault(schema: z.ZodType): string {
  if (!(schema instanceof z.ZodDefault)) {
    return '(none)';
  }
  const value: unknown = schema.def.defaultValue;
  if (Array.isArray(value)) {
    return value.length === 0 ? '(empty)' : `\`${value.join(',')}\``;
  }
  if (value === '') {
    return '(empty)';
  }
  return `\`${String(value)}\``;
}
