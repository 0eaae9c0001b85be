import './register-aliases';
import { randomBytes } from 'node:crypto';

/** Builds the migrated template databases once per jest run; test files clone them. */
export default async function globalSetup(): Promise<void> {
  process.env.KEYHOLE_TEST_RUN_ID ??= randomBytes(4).toString('hex');
  // Required only now, after the alias hook is in place.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { createTemplates } = require('./databases') as typeof import('./databases');
  await createTemplates();
}
