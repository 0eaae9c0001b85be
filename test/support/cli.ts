import { runCli } from '../../apps/cli/src/main';

/**
 * Runs `keyhole ARGV` in-process as an operator would, with the environment `base` plus
 * `environment` for the run only (the CLI reads its configuration from it); the process's
 * environment is put back after. Resolves with the exit code and the lines it printed.
 */
export async function runKeyhole(
  argv: string[],
  environment: Record<string, string>,
  base: NodeJS.ProcessEnv = process.env,
): Promise<{ code: number; out: string }> {
  const saved = { ...process.env };
  process.env = { ...base, ...environment };
  const lines: string[] = [];
  try {
    const code = await runCli(argv, (line) => lines.push(line));
    return { code, out: lines.join('\n') };
  } finally {
    process.env = saved;
  }
}
