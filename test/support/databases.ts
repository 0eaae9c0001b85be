import { randomBytes } from 'node:crypto';
import { Client } from 'pg';
import {
  CELL_CONNECTION_OPTIONS,
  createDatabaseIfMissing,
  createDataSource,
  DatabaseKind,
  dropDatabase,
  migrateCellDatabase,
  migrateDatabase,
} from '@keyhole/db';

/** The PostgreSQL server the tests use; each test file creates and drops its own databases on it. */
export const TEST_SERVER_URL = process.env.KEYHOLE_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export function urlForDatabase(name: string): string {
  const url = new URL(TEST_SERVER_URL);
  url.pathname = `/${name}`;
  return url.toString();
}

function templateName(kind: DatabaseKind): string {
  const runId = process.env.KEYHOLE_TEST_RUN_ID;
  if (!runId) {
    throw new Error('KEYHOLE_TEST_RUN_ID is not set: run the tests through jest (global setup)');
  }
  return `keyhole_tpl_${kind}_${runId}`;
}

/** Builds the control and cell templates with the real migrations (once per jest run). */
export async function createTemplates(): Promise<void> {
  for (const kind of ['control', 'cell'] as const) {
    const url = urlForDatabase(templateName(kind));
    await dropDatabase(url);
    await createDatabaseIfMissing(url);
    await migrateTestDatabase(kind, url);
  }
}

/** Runs the real migrations on a database of this kind; resolves with the names of those it applied. */
export async function migrateTestDatabase(kind: DatabaseKind, url: string): Promise<string[]> {
  const dataSource = createDataSource(kind, {
    url,
    poolSize: 1,
    connectTimeoutMs: 5_000,
    queryTimeoutMs: 65_000,
    statementTimeoutMs: 60_000,
    applicationName: 'keyhole-test',
  });
  await dataSource.initialize();
  try {
    return kind === 'cell' ? (await migrateCellDatabase(dataSource)).applied : await migrateDatabase(dataSource);
  } finally {
    await dataSource.destroy();
  }
}

export async function dropTemplates(): Promise<void> {
  for (const kind of ['control', 'cell'] as const) {
    await dropDatabase(urlForDatabase(templateName(kind)));
  }
}

/** A fresh, fully migrated database of this kind for one test file; `drop()` removes it. */
export async function createTestDatabase(kind: DatabaseKind): Promise<{ url: string; name: string; drop: () => Promise<void> }> {
  const name = `keyhole_test_${kind}_${randomBytes(5).toString('hex')}`;
  const url = urlForDatabase(name);
  await createDatabaseIfMissing(url, templateName(kind));
  return { url, name, drop: () => dropDatabase(url) };
}

/** A console_sessions row as pg returns it (bigint columns as strings), for assertions on raw rows. */
export interface SessionRow extends Record<string, unknown> {
  id: string;
  token_id: string | null;
  token_source: string;
  token_fingerprint: string;
  instance_uuid: string;
  console_type: string;
  host: string;
  port: number;
  proxy_instance: string;
  client_address: string | null;
  started_at: Date;
  last_seen_at: Date;
  ended_at: Date | null;
  close_reason: string | null;
  bytes_to_client: string;
  bytes_to_upstream: string;
}

/**
 * Runs one query on a database with a short-lived client (assertions on raw rows). Its search_path
 * is a keyhole connection's to a cell (keyhole's schema, then public), so that `console_sessions`
 * names keyhole's table in a cell database; on a control database it is only `public`.
 */
export async function queryDatabase<Row extends Record<string, unknown>>(
  url: string,
  sql: string,
  parameters: unknown[] = [],
): Promise<Row[]> {
  const client = new Client({ connectionString: url, options: CELL_CONNECTION_OPTIONS });
  await client.connect();
  try {
    return (await client.query<Row>(sql, parameters)).rows;
  } finally {
    await client.end();
  }
}
