import { Client } from 'pg';
import { DataSource } from 'typeorm';

// Any fixed 64-bit key works; it only has to differ from the purge leader lock.
const MIGRATION_LOCK_KEY = 0x6b68_6d69_6772; // "khmigr"

/**
 * Brings one database to the latest schema. Several processes may start at once (replicas, CLI),
 * so the run holds a session advisory lock; each migration runs in its own transaction.
 * A DataSource that is not initialized is opened for the run and destroyed after it (the apps
 * reach their tables through their own pools and keep no DataSource open).
 * Returns the names of the migrations that ran.
 */
export async function migrateDatabase(dataSource: DataSource): Promise<string[]> {
  const openedHere = !dataSource.isInitialized;
  if (openedHere) {
    await dataSource.initialize();
  }
  // The lock lives on its own connection so that a pool of one can still run the migrations. It has
  // the run's deadlines: waiting for another run's lock is bounded like a statement.
  const extra = dataSource.options.extra as { query_timeout?: number; connectionTimeoutMillis?: number } | undefined;
  const lock = new Client({
    connectionString: (dataSource.options as { url: string }).url,
    connectionTimeoutMillis: extra?.connectionTimeoutMillis,
    query_timeout: extra?.query_timeout,
  });
  try {
    await lock.connect();
    await lock.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
    const applied = await dataSource.runMigrations({ transaction: 'each' });
    return applied.map((migration) => migration.name);
  } finally {
    // Ending the session releases the lock even if the unlock is never sent.
    await lock.end();
    if (openedHere) {
      await dataSource.destroy();
    }
  }
}

/**
 * Creates the database named in `url` when it does not exist, connecting to the server's
 * `postgres` database. Used by the local deployment and the tests, never by the production path.
 */
export async function createDatabaseIfMissing(url: string, template?: string): Promise<boolean> {
  const target = new URL(url);
  const name = decodeURIComponent(target.pathname.replace(/^\//, ''));
  if (!/^[A-Za-z0-9_-]{1,63}$/.test(name)) {
    throw new Error(`unsupported database name in URL`);
  }
  const admin = new URL(url);
  admin.pathname = '/postgres';
  const client = adminClient(admin);
  await client.connect();
  try {
    const existing = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (existing.rowCount) {
      return false;
    }
    const templateClause = template ? ` TEMPLATE "${template.replace(/"/g, '')}"` : '';
    await client.query(`CREATE DATABASE "${name}"${templateClause}`);
    return true;
  } finally {
    await client.end();
  }
}

/** Drops the database named in `url` (tests only), ending its connections first. */
export async function dropDatabase(url: string): Promise<void> {
  const target = new URL(url);
  const name = decodeURIComponent(target.pathname.replace(/^\//, ''));
  const admin = new URL(url);
  admin.pathname = '/postgres';
  const client = adminClient(admin);
  await client.connect();
  try {
    await client.query(`DROP DATABASE IF EXISTS "${name.replace(/"/g, '')}" WITH (FORCE)`);
  } finally {
    await client.end();
  }
}

// CREATE DATABASE copies a template: seconds on a busy server, never minutes.
const ADMIN_CONNECT_TIMEOUT_MS = 10_000;
const ADMIN_QUERY_TIMEOUT_MS = 120_000;

/** A client on the server's `postgres` database, with deadlines: a server that does not answer fails the call. */
function adminClient(admin: URL): Client {
  return new Client({
    connectionString: admin.toString(),
    connectionTimeoutMillis: ADMIN_CONNECT_TIMEOUT_MS,
    query_timeout: ADMIN_QUERY_TIMEOUT_MS,
  });
}
