import './register-aliases';
import { randomBytes } from 'node:crypto';

/** Builds the migrated template databases once per jest run; test files clone them. */
export default async function globalSetup(): Promise<void> {
  process.env.KEYHOLE_TEST_RUN_ID ??= randomBytes(4).toString('hex');
  const { createTemplates } = await import('./databases');
  await createTemplates();
}
