import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { isHostname } from '@keyhole/core';

/*
 * OpenNebula's transparent-proxy mapping (the `:tproxy:` key of OpenNebulaNetwork.conf), YAML:
 *
 *   :tproxy:
 *     - :service_port: 5030          # listen on ADDRESS:5030 (ADDRESS: 169.254.16.9 by default)
 *       :remote_addr: 127.0.0.1      # and carry each connection to 127.0.0.1:8080, dialled by the
 *       :remote_port: 8080           # serving connector at the other end of the UNIX socket
 *     - :service_port: 1234
 *       :remote_addr: 169.254.40.5
 *       :remote_port: 1234
 *       :networks: [tenant-a]        # only where the connector runs for one of these networks
 *
 * Keys are Ruby symbols there (`:service_port`); the same keys without the colon are accepted.
 * Other top-level keys of OpenNebulaNetwork.conf are ignored, so that file itself can be given;
 * unknown keys inside an entry are errors (a misspelt key must not silently change a mapping).
 */

export interface TproxyEntry {
  servicePort: number;
  remoteAddr: string;
  remotePort: number;
  /** Undefined: the entry applies to every network. */
  networks?: string[];
}

const port = z.int('must be a port number').min(1, 'must be between 1 and 65535').max(65535, 'must be between 1 and 65535');

const entrySchema = z.strictObject({
  service_port: port,
  remote_addr: z.string().refine((value) => isIP(value) !== 0 || isHostname(value), 'must be an IP address or a host name'),
  remote_port: port,
  networks: z.array(z.union([z.string().min(1), z.number()]).transform(String)).optional(),
});

const fileSchema = z.looseObject({ tproxy: z.array(entrySchema) });

/** A tproxy file that cannot be used; `problems` name the entry and key. */
export class TproxyFileError extends Error {
  constructor(
    readonly file: string,
    readonly problems: string[],
  ) {
    super(`Invalid transparent-proxy file ${file}:\n${problems.map((problem) => `  ${problem}`).join('\n')}`);
    this.name = 'TproxyFileError';
  }
}

/** Parses a tproxy file's text into its entries, in file order. */
export function parseTproxyFile(text: string, file: string): TproxyEntry[] {
  const document = parseDocument(text, { prettyErrors: false, uniqueKeys: true });
  if (document.errors.length > 0) {
    throw new TproxyFileError(
      file,
      document.errors.map((error) => `${file}: ${error.message}`),
    );
  }
  const parsed = fileSchema.safeParse(withoutColons(document.toJS()), {
    error: (issue) => (issue.code === 'invalid_type' && issue.input === undefined ? 'required' : undefined),
  });
  if (!parsed.success) {
    throw new TproxyFileError(
      file,
      parsed.error.issues.map((issue) => {
        const keys = issue.code === 'unrecognized_keys' ? ` (${issue.keys.map((key) => `:${key}`).join(', ')})` : '';
        return `${file}: ${formatPath(issue.path)}: ${issue.message}${keys}`;
      }),
    );
  }
  return parsed.data.tproxy.map((entry) => ({
    servicePort: entry.service_port,
    remoteAddr: entry.remote_addr,
    remotePort: entry.remote_port,
    networks: entry.networks,
  }));
}

/** Reads and parses a tproxy file. */
export async function loadTproxyFile(file: string): Promise<TproxyEntry[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new TproxyFileError(file, [`${file}: cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`]);
  }
  return parseTproxyFile(text, file);
}

/**
 * The entries that apply to `network` (undefined: the connector serves no particular network, and
 * only entries without `networks` apply), one per service port: the first entry of a port wins, and
 * each later one is returned in `ignored` for a warning.
 */
export function selectTproxyEntries(
  entries: TproxyEntry[],
  network: string | undefined,
): { entries: TproxyEntry[]; ignored: { entry: TproxyEntry; index: number; shadowedBy: number }[] } {
  const selected: TproxyEntry[] = [];
  const firstIndex = new Map<number, number>();
  const ignored: { entry: TproxyEntry; index: number; shadowedBy: number }[] = [];
  entries.forEach((entry, index) => {
    if (entry.networks !== undefined && (network === undefined || !entry.networks.includes(network))) {
      return;
    }
    const first = firstIndex.get(entry.servicePort);
    if (first !== undefined) {
      ignored.push({ entry, index, shadowedBy: first });
      return;
    }
    firstIndex.set(entry.servicePort, index);
    selected.push(entry);
  });
  return { entries: selected, ignored };
}

/** Ruby symbol keys (`:service_port`) as plain keys, at every level. */
function withoutColons(value: unknown): unknown {
  if (Array.isArray(value)) {
    return value.map(withoutColons);
  }
  if (typeof value === 'object' && value !== null) {
    return Object.fromEntries(
      Object.entries(value).map(([key, inner]) => [key.startsWith(':') ? key.slice(1) : key, withoutColons(inner)]),
    );
  }
  return value;
}

/** `:tproxy[1]:remote_port` */
function formatPath(path: PropertyKey[]): string {
  return path.map((key) => (typeof key === 'number' ? `[${key}]` : `:${String(key)}`)).join('') || '(file)';
}
