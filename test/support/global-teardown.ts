import './register-aliases';

export default async function globalTeardown(): Promise<void> {
  // Required only now, after the alias hook is in place.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { dropTemplates } = require('./databases') as typeof import('./databases');
  await dropTemplates();
}
