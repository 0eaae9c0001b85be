/*
 * What the tests read of a Prometheus text exposition (`GET /metrics` of the API and the proxy).
 */

/** The body of `GET BASE/metrics`, after checking that it answered 200. */
export async function scrapeMetrics(httpBase: string): Promise<string> {
  const response = await fetch(`${httpBase}/metrics`);
  expect(response.status).toBe(200);
  return response.text();
}

/** The value of the first sample of `name` whose labels include `labels`, or undefined. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) {
      continue;
    }
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) {
      continue;
    }
    const sampleLabels = Object.fromEntries(
      [...(match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((label) => [label[1], label[2]]),
    );
    if (Object.entries(labels).every(([key, value]) => sampleLabels[key] === value)) {
      return Number(match[3]);
    }
  }
  return undefined;
}
