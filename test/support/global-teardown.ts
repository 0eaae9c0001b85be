import './register-aliases';

export default async function globalTeardown(): Promise<void> {
  const { dropTemplates } = await import('./databases');
  await dropTemplates();
}
