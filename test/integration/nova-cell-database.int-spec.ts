import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { DataSource } from 'typeorm';
import { CellDatabase } from '@keyhole/cells';
import {
  CELL_CONNECTION_OPTIONS,
  checkCellSchema,
  createDatabaseIfMissing,
  createDataSource,
  createPool,
  dropDatabase,
  KEYHOLE_SCHEMA,
  migrateDatabase,
  NewConsoleAuthTokenRow,
  NOVA_EXPIRES_INDEX_SQL,
} from '@keyhole/db';
import { CELL_MIGRATIONS } from '@keyhole/migrations';
import { migrateTestDatabase, queryDatabase, urlForDatabase } from '../support/databases';
import { applyNovaSchema, applyNovaUpstreamMigrations, nova, NOVA_FIXTURE_VERSION, queryAsNova } from '../support/nova';
import { Teardown } from '../support/teardown';
import { waitUntil } from '../support/wait';

/*
 * A cell database shared with Nova (issue 14): Nova's schema comes from the fixture of a real
 * `nova-manage db sync` (test/fixtures/nova), Nova's code from the statements it was recorded
 * sending; keyhole's side is its real migrations and repositories.
 */

const sha256 = (value: string) => createHash('sha256').update(value).digest('hex');
const now = () => Math.floor(Date.now() / 1000);

const teardown = new Teardown();
afterAll(() => teardown.stopAll(), 60_000);

/** An empty database (no template, no migration), dropped after the file. */
async function emptyDatabase(): Promise<string> {
  const url = urlForDatabase(`keyhole_test_nova_${randomBytes(5).toString('hex')}`);
  await createDatabaseIfMissing(url);
  teardown.add(url, () => dropDatabase(url));
  return url;
}

/** keyhole's view of a cell database, as the token API and the proxy open it. */
function openCell(url: string): CellDatabase {
  return teardown.add(
    new CellDatabase(
      'cell1',
      createPool({
        url,
        poolSize: 2,
        connectTimeoutMs: 5_000,
        queryTimeoutMs: 10_000,
        statementTimeoutMs: 10_000,
        applicationName: 'keyhole-test',
        connectionOptions: CELL_CONNECTION_OPTIONS,
      }),
    ),
  );
}

function keyholeRow(overrides: Partial<NewConsoleAuthTokenRow> = {}): NewConsoleAuthTokenRow & { token: string } {
  const token = randomBytes(32).toString('base64url');
  return {
    token,
    tokenHash: sha256(token),
    consoleType: 'serial',
    host: '10.0.0.2',
    port: 10000,
    tlsPort: null,
    internalAccessPath: null,
    instanceUuid: randomUUID(),
    expires: now() + 600,
    accessUrlBase: 'ws://127.0.0.1:6083/',
    objectVersion: '1.4',
    issuedBy: 'agent0001',
    ...overrides,
  };
}

/**
 * Everything of Nova's table that Nova's code or its migrations could notice (columns, defaults,
 * constraints, triggers, foreign keys into it), as Nova's connections see it.
 */
async function novaTableShape(url: string) {
  const columns = await queryAsNova(
    url,
    `SELECT column_name, data_type, character_maximum_length, is_nullable, column_default FROM information_schema.columns
      WHERE table_schema = 'public' AND table_name = 'console_auth_tokens' ORDER BY ordinal_position`,
  );
  const constraints = await queryAsNova(
    url,
    `SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint
      WHERE conrelid = 'public.console_auth_tokens'::regclass ORDER BY conname`,
  );
  const triggers = await queryAsNova(url, `SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.console_auth_tokens'::regclass`);
  const references = await queryAsNova(url, `SELECT conname FROM pg_constraint WHERE confrelid = 'public.console_auth_tokens'::regclass`);
  return { columns, constraints, triggers, references };
}

const indexNames = async (url: string) =>
  (
    await queryDatabase<{ indexname: string }>(
      url,
      `SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'console_auth_tokens' ORDER BY indexname`,
    )
  ).map((row) => row.indexname);

const publicTables = async (url: string) =>
  (await queryDatabase<{ tablename: string }>(url, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`)).map(
    (row) => row.tablename,
  );

const novaRows = (url: string) => queryDatabase(url, 'SELECT * FROM public.console_auth_tokens ORDER BY id');

describe(`a cell database shared with Nova (fixture of Nova ${NOVA_FIXTURE_VERSION})`, () => {
  it("migrates a database that nova-manage db sync created, keeping every row and adding nothing to Nova's table but an index", async () => {
    const url = await emptyDatabase();
    await applyNovaSchema(url);
    const instance = randomUUID();
    const valid = randomUUID();
    const expired = randomUUID();
    await nova.authorize(url, { tokenHash: sha256(valid), instanceUuid: instance });
    await nova.authorize(url, { tokenHash: sha256(expired), instanceUuid: instance, expires: now() - 5 });
    const rowsBefore = await novaRows(url);
    const shapeBefore = await novaTableShape(url);
    const indexesBefore = await indexNames(url);
    const alembicBefore = await queryDatabase(url, 'SELECT * FROM alembic_version');

    expect(await migrateTestDatabase('cell', url)).toEqual(CELL_MIGRATIONS.map((migration) => migration.name));

    expect(await novaRows(url)).toEqual(rowsBefore);
    expect(await novaTableShape(url)).toEqual(shapeBefore);
    expect(await indexNames(url)).toEqual([...indexesBefore, 'keyhole_console_auth_tokens_expires_idx'].sort());
    expect(await queryDatabase(url, 'SELECT * FROM alembic_version')).toEqual(alembicBefore);
    // Nothing of keyhole's in Nova's schema: every keyhole table, its migrations table included, is in its own.
    expect(await publicTables(url)).toEqual(['alembic_version', 'console_auth_tokens']);
    expect(
      (
        await queryDatabase<{ tablename: string }>(url, `SELECT tablename FROM pg_tables WHERE schemaname = '${KEYHOLE_SCHEMA}' ORDER BY 1`)
      ).map((row) => row.tablename),
    ).toEqual([
      'cell_settings',
      'console_auth_token_extras',
      'console_auth_tokens',
      'console_sessions',
      'keyhole_migrations',
      'revoked_token_hashes',
    ]);
    // A second run has nothing to do.
    expect(await migrateTestDatabase('cell', url)).toEqual([]);

    const cell = openCell(url);
    expect(await cell.checkSchema()).toMatchObject({
      problems: [],
      tokenTable: { table: 'public.console_auth_tokens', nova: true },
      strandedTokens: 0,
    });
    // keyhole validates Nova's token; the expired one is refused.
    expect(await cell.tokens.findValidByHash(sha256(valid), now())).toMatchObject({
      instanceUuid: instance,
      consoleType: 'novnc',
      objectVersion: null,
      issuedBy: null,
    });
    expect(await cell.tokens.findValidByHash(sha256(expired), now())).toBeNull();
    expect(await cell.tokens.findValidByHashes([sha256(valid)], now())).toHaveLength(1);
    // Nova's own validate still works on its token.
    expect(await nova.validate(url, sha256(valid))).toMatchObject({ console_auth_tokens_instance_uuid: instance });
  });

  it("serves Nova's tokens in keyhole and keyhole's in Nova, and keyhole's purge and Nova's cleanups agree", async () => {
    const url = await emptyDatabase();
    await applyNovaSchema(url);
    await migrateTestDatabase('cell', url);
    const cell = openCell(url);
    const instance = randomUUID();

    const issued = keyholeRow({ instanceUuid: instance, tlsPort: 5901 });
    const stored = await cell.tokens.insert(issued);
    expect(stored).toMatchObject({ tokenHash: issued.tokenHash, tlsPort: 5901, objectVersion: '1.4', issuedBy: 'agent0001' });
    expect(stored.createdAt).toBeInstanceOf(Date);
    // keyhole's token is a plain row of Nova's table (Nova 26's has no tls_port: that one is in keyhole's extras).
    const [row] = await queryDatabase(url, 'SELECT * FROM public.console_auth_tokens WHERE token_hash = $1', [issued.tokenHash]);
    expect(row).toMatchObject({ id: stored.id, console_type: 'serial', host: '10.0.0.2', port: 10000, instance_uuid: instance });
    expect(row.created_at).toBeInstanceOf(Date);
    expect(Object.keys(row).sort()).toEqual(
      [
        'access_url_base',
        'console_type',
        'created_at',
        'expires',
        'host',
        'id',
        'instance_uuid',
        'internal_access_path',
        'port',
        'token_hash',
        'updated_at',
      ].sort(),
    );
    expect(await nova.validate(url, issued.tokenHash)).toMatchObject({
      console_auth_tokens_id: stored.id,
      console_auth_tokens_port: 10000,
    });
    expect(await cell.tokens.findValidByHash(issued.tokenHash, now())).toMatchObject({
      id: stored.id,
      tlsPort: 5901,
      issuedBy: 'agent0001',
    });

    // Nova's clean_console_auths_for_instance deletes keyhole's tokens of the instance too; the
    // extras it leaves behind are purged at their expiry, and never read (the join finds no token).
    const novaToken = randomUUID();
    await nova.authorize(url, { tokenHash: sha256(novaToken), instanceUuid: instance });
    expect(await nova.cleanInstance(url, instance)).toBe(2);
    expect(await cell.tokens.findValidByHash(issued.tokenHash, now())).toBeNull();
    expect(await cell.tokens.deleteExpiredExtrasBatch(issued.expires, 100)).toBe(1);

    // The same rows are expired for both: `expires <= now`.
    const at = now();
    const expiries = [at - 100, at - 1, at, at + 1, at + 100];
    for (const expires of expiries) {
      await nova.authorize(url, { tokenHash: sha256(randomUUID()), expires });
      await cell.tokens.insert(keyholeRow({ expires }));
    }
    expect(await cell.tokens.deleteExpiredBatch(at, 100)).toBe(6);
    expect(await nova.cleanExpired(url, at)).toBe(0);
    const left = await queryDatabase<{ expires: number }>(url, 'SELECT expires FROM public.console_auth_tokens ORDER BY expires');
    expect(left.map((remaining) => remaining.expires)).toEqual([at + 1, at + 1, at + 100, at + 100]);
    expect(await cell.tokens.deleteExpiredBatch(at + 1, 100)).toBe(2);
    expect(await nova.cleanExpired(url, at + 100)).toBe(2);
    expect(await cell.tokens.deleteExpiredExtrasBatch(at + 100, 100)).toBe(5);
  });

  it("keyhole first, then Nova's DDL: Nova's table is the token table at once, and the next migration adopts keyhole's own tokens", async () => {
    const url = await emptyDatabase();
    await migrateTestDatabase('cell', url);
    const cell = openCell(url);
    // Another process of keyhole's (the token API beside the proxy), also started before Nova's table.
    const writer = openCell(url);
    const earlier = keyholeRow({ tlsPort: 5902 });
    const stored = await writer.tokens.insert(earlier);
    expect(await cell.tokens.findValidByHashes([earlier.tokenHash], now())).toHaveLength(1);
    await queryDatabase(
      url,
      `INSERT INTO console_sessions (id, token_id, token_fingerprint, instance_uuid, console_type, host, port, proxy_instance)
       VALUES ($1, $2, 'f', $3, 'serial', '10.0.0.2', 10000, 'p')`,
      [randomUUID(), stored.id, earlier.instanceUuid],
    );

    await applyNovaSchema(url); // nova-manage db sync: succeeds next to keyhole's tables
    // keyhole's next token goes into Nova's table at once, where every proxy now looks.
    const later = keyholeRow();
    await writer.tokens.insert(later);
    expect(await nova.validate(url, later.tokenHash)).toBeDefined();
    const novaToken = randomUUID();
    const novaId = await nova.authorize(url, { tokenHash: sha256(novaToken) });

    // The same pool (its statements prepared against keyhole's own table) finds Nova's token.
    const startedAt = Date.now();
    const [grant] = await waitUntil(
      async () => {
        const found = await cell.tokens.findValidByHashes([sha256(novaToken)], now());
        return found.length === 1 ? found : undefined;
      },
      5_000,
      "keyhole to find Nova's token",
    );
    expect(grant).toMatchObject({ id: novaId, consoleType: 'novnc' });
    expect(Date.now() - startedAt).toBeLessThan(2_500);
    expect(await cell.tokens.findValidByHash(sha256(novaToken), now())).toMatchObject({ id: novaId });
    expect(await cell.tokens.findValidByHash(later.tokenHash, now())).toMatchObject({ tokenHash: later.tokenHash, issuedBy: 'agent0001' });
    // The earlier token waits in keyhole's own table, and says so.
    expect(await cell.tokens.findValidByHash(earlier.tokenHash, now())).toBeNull();
    expect(await cell.checkSchema()).toMatchObject({ problems: [], strandedTokens: 1 });

    expect(await migrateTestDatabase('cell', url)).toEqual([]);
    const adopted = await cell.tokens.findValidByHash(earlier.tokenHash, now());
    expect(adopted).toMatchObject({
      tokenHash: earlier.tokenHash,
      tlsPort: 5902,
      objectVersion: '1.4',
      issuedBy: 'agent0001',
      expires: earlier.expires,
    });
    expect(await nova.validate(url, earlier.tokenHash)).toMatchObject({ console_auth_tokens_id: adopted!.id });
    expect(await queryDatabase(url, 'SELECT token_id FROM console_sessions')).toEqual([{ token_id: String(adopted!.id) }]);
    expect(await queryDatabase(url, `SELECT count(*)::int AS n FROM ${KEYHOLE_SCHEMA}.console_auth_tokens`)).toEqual([{ n: 0 }]);
    expect(await cell.checkSchema()).toMatchObject({ problems: [], strandedTokens: 0 });
  });

  it.each([
    ['Nova first', true],
    ['keyhole first', false],
  ])("applies Nova's later migrations of console_auth_tokens (tls_port) after keyhole migrated (%s)", async (_order, novaFirst) => {
    const url = await emptyDatabase();
    if (novaFirst) {
      await applyNovaSchema(url);
      await migrateTestDatabase('cell', url);
    } else {
      await migrateTestDatabase('cell', url);
      await applyNovaSchema(url);
    }
    const cell = openCell(url);
    const before = keyholeRow({ tlsPort: 5903 });
    await cell.tokens.insert(before);

    await applyNovaUpstreamMigrations(url);
    expect(
      await queryDatabase(
        url,
        `SELECT data_type FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'console_auth_tokens' AND column_name = 'tls_port'`,
      ),
    ).toEqual([{ data_type: 'integer' }]);
    await migrateTestDatabase('cell', url);

    // keyhole writes tls_port into Nova's column (Nova >= 31's validate reads it there), and reads
    // Nova's; the token issued before the column existed keeps its tls_port from the extras.
    await cell.tokens.table.resolve();
    const after = keyholeRow({ tlsPort: 5904 });
    await cell.tokens.insert(after);
    expect(await queryDatabase(url, 'SELECT tls_port FROM public.console_auth_tokens WHERE token_hash = $1', [after.tokenHash])).toEqual([
      { tls_port: 5904 },
    ]);
    const novaToken = randomUUID();
    const novaId = await nova.authorize(url, { tokenHash: sha256(novaToken) });
    await queryDatabase(url, 'UPDATE public.console_auth_tokens SET tls_port = 5905 WHERE id = $1', [novaId]);
    expect(await cell.tokens.findValidByHash(sha256(novaToken), now())).toMatchObject({ id: novaId, tlsPort: 5905 });
    expect(await cell.tokens.findValidByHash(after.tokenHash, now())).toMatchObject({ tlsPort: 5904 });
    expect(await cell.tokens.findValidByHash(before.tokenHash, now())).toMatchObject({ tlsPort: 5903 });
    expect(await nova.validate(url, before.tokenHash)).toBeDefined();
  });

  it("works as a database role of its own that does not own Nova's table: no index on it, everything else as usual", async () => {
    const url = await emptyDatabase();
    await applyNovaSchema(url);
    const novaToken = randomUUID();
    await nova.authorize(url, { tokenHash: sha256(novaToken) });
    // keyhole's role: may create its schema, and read and write Nova's table; owns nothing of Nova's.
    const role = `keyhole_test_role_${randomBytes(4).toString('hex')}`;
    const database = new URL(url).pathname.slice(1);
    await queryDatabase(url, `CREATE ROLE ${role} LOGIN`);
    // The role owns keyhole's schema: the database goes first (its own stop is IF EXISTS).
    teardown.add(role, async () => {
      await dropDatabase(url);
      await queryDatabase(urlForDatabase('postgres'), `DROP ROLE IF EXISTS ${role}`);
    });
    await queryDatabase(url, `GRANT CREATE, CONNECT ON DATABASE "${database}" TO ${role}`);
    await queryDatabase(url, `GRANT SELECT, INSERT, UPDATE, DELETE ON public.console_auth_tokens TO ${role}`);
    await queryDatabase(url, `GRANT USAGE ON SEQUENCE public.console_auth_tokens_id_seq TO ${role}`);
    const asRole = Object.assign(new URL(url), { username: role }).toString();

    expect(await migrateTestDatabase('cell', asRole)).toHaveLength(CELL_MIGRATIONS.length);
    expect(await indexNames(url)).not.toContain('keyhole_console_auth_tokens_expires_idx');
    const cell = openCell(asRole);
    expect(await cell.checkSchema()).toMatchObject({ problems: [], tokenTable: { nova: true } });
    expect(await cell.tokens.findValidByHash(sha256(novaToken), now())).not.toBeNull();
    const issued = keyholeRow();
    await cell.tokens.insert(issued);
    expect(await nova.validate(url, issued.tokenHash)).toBeDefined();
    expect(await cell.tokens.deleteExpiredBatch(now() + 3600, 100)).toBe(2);
    // Nova's role (the table's owner) can add the index later; keyhole's next run leaves it be.
    await queryDatabase(url, NOVA_EXPIRES_INDEX_SQL);
    expect(await migrateTestDatabase('cell', asRole)).toEqual([]);
    expect(await indexNames(url)).toContain('keyhole_console_auth_tokens_expires_idx');
  });

  it('moves the tables of an older keyhole from public into the keyhole schema, with their rows and ids', async () => {
    const url = await emptyDatabase();
    // What an older keyhole did: every cell migration up to the extras, in public.
    const old = new DataSource({
      type: 'postgres',
      url,
      migrations: CELL_MIGRATIONS.slice(0, 5),
      migrationsTableName: 'keyhole_migrations',
    });
    await old.initialize();
    await old.runMigrations({ transaction: 'each' });
    await old.destroy();
    const token = randomBytes(32).toString('base64url');
    await queryDatabase(
      url,
      `INSERT INTO public.console_auth_tokens (token_hash, console_type, host, port, tls_port, instance_uuid, expires, object_version, issued_by)
       VALUES ($1, 'novnc', 'h', 5900, 5901, 'i', $2, '1.4', 'agent0002')`,
      [sha256(token), now() + 600],
    );
    await queryDatabase(url, `INSERT INTO public.cell_settings (name, value, changed_by) VALUES ('legacy_fallback', 'true', 'op')`);
    await queryDatabase(url, `INSERT INTO public.revoked_token_hashes (token_hash, expires) VALUES ($1, $2)`, ['a'.repeat(64), now() + 60]);
    const [{ id }] = await queryDatabase<{ id: string }>(url, 'SELECT id FROM public.console_auth_tokens');

    expect(await migrateTestDatabase('cell', url)).toEqual(['MoveTokenExtrasToSideTable1796500000000']);
    expect(await publicTables(url)).toEqual([]);
    const cell = openCell(url);
    expect(await cell.checkSchema()).toMatchObject({ problems: [], tokenTable: { table: 'keyhole.console_auth_tokens' } });
    expect(await cell.tokens.findValidByHash(sha256(token), now())).toMatchObject({
      id: Number(id),
      tlsPort: 5901,
      objectVersion: '1.4',
      issuedBy: 'agent0002',
    });
    expect(await cell.settings.current('legacy_fallback')).toMatchObject({ value: true });
    expect(await cell.tokens.isRevokedHash('a'.repeat(64), now())).toBe(true);
    // The sequences moved with their tables: a new row gets the next id.
    expect((await cell.tokens.insert(keyholeRow())).id).toBe(Number(id) + 1);
  });

  it('leaves nothing behind when a migration of the run fails: not the keyhole schema, not a moved table', async () => {
    // An older keyhole's database where someone created, by hand, the index that the last
    // committed migration creates: that migration fails after the tables were moved.
    const url = await emptyDatabase();
    const old = new DataSource({
      type: 'postgres',
      url,
      migrations: CELL_MIGRATIONS.slice(0, 4),
      migrationsTableName: 'keyhole_migrations',
    });
    await old.initialize();
    await old.runMigrations({ transaction: 'each' });
    await old.destroy();
    await queryDatabase(url, 'CREATE INDEX console_sessions_live_proxy_idx ON public.console_sessions (proxy_instance)');
    await queryDatabase(
      url,
      `INSERT INTO public.console_auth_tokens (token_hash, console_type, host, port, instance_uuid, expires) VALUES ($1, 'novnc', 'h', 5900, 'i', $2)`,
      [sha256('x'), now() + 600],
    );
    const before = await catalogSnapshot(url);

    await expect(migrateTestDatabase('cell', url)).rejects.toThrow(/console_sessions_live_proxy_idx.*already exists/);
    expect(await catalogSnapshot(url)).toEqual(before);
    expect(await queryDatabase(url, `SELECT to_regnamespace('${KEYHOLE_SCHEMA}') AS schema`)).toEqual([{ schema: null }]);
  });

  it("leaves a Nova database exactly as it was when the run fails at its end, Nova's rows untouched", async () => {
    const url = await emptyDatabase();
    await applyNovaSchema(url);
    await nova.authorize(url, { tokenHash: sha256(randomUUID()) });
    const before = await catalogSnapshot(url);
    const rows = await novaRows(url);

    const dataSource = createDataSource('cell', {
      url,
      poolSize: 1,
      connectTimeoutMs: 5_000,
      queryTimeoutMs: 10_000,
      statementTimeoutMs: 10_000,
      applicationName: 'keyhole-test',
    });
    await expect(
      migrateDatabase(dataSource, {
        schema: KEYHOLE_SCHEMA,
        after: async (queryRunner) => {
          // Every migration ran in this transaction; then the run fails.
          expect(await queryRunner.query(`SELECT count(*)::int AS n FROM ${KEYHOLE_SCHEMA}.keyhole_migrations`)).toEqual([
            { n: CELL_MIGRATIONS.length },
          ]);
          throw new Error('failed at the end');
        },
      }),
    ).rejects.toThrow('failed at the end');

    expect(await catalogSnapshot(url)).toEqual(before);
    expect(await novaRows(url)).toEqual(rows);
  });

  it('names what a cell database lacks: no keyhole schema, a migration not applied, a column of the token table', async () => {
    const url = await emptyDatabase();
    const cell = openCell(url);
    expect((await cell.checkSchema()).problems).toEqual([
      `no keyhole schema (${KEYHOLE_SCHEMA}.keyhole_migrations is missing)`,
      'no console_auth_tokens table',
    ]);
    await expect(cell.requireCompleteSchema()).rejects.toMatchObject({
      code: 'CELL_SCHEMA_INCOMPLETE',
      message: expect.stringContaining('keyhole migrate'),
    });

    await migrateTestDatabase('cell', url);
    await queryDatabase(url, `DELETE FROM keyhole_migrations WHERE name = 'AddExclusiveConsoleIndex1796025000000'`);
    await queryDatabase(url, 'DROP INDEX console_sessions_exclusive_target_idx');
    expect((await checkCellSchema(cell.pool, now())).problems).toEqual(['migrations not applied: AddExclusiveConsoleIndex1796025000000']);

    await migrateTestDatabase('cell', url);
    await applyNovaSchema(url);
    await queryDatabase(url, 'ALTER TABLE public.console_auth_tokens DROP COLUMN access_url_base');
    expect((await cell.checkSchema()).problems).toEqual(['public.console_auth_tokens lacks columns access_url_base']);
  });
});

/** Every table, index, sequence, schema and row count of a database: what a failed run must not change. */
async function catalogSnapshot(url: string) {
  const relations = await queryDatabase<{ schema: string; name: string; kind: string }>(
    url,
    `SELECT n.nspname AS schema, c.relname AS name, c.relkind AS kind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1, 2`,
  );
  const schemas = await queryDatabase(
    url,
    `SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_%' AND nspname <> 'information_schema' ORDER BY 1`,
  );
  const rows: Record<string, unknown> = {};
  for (const relation of relations.filter((candidate) => candidate.kind === 'r')) {
    rows[`${relation.schema}.${relation.name}`] = await queryDatabase(
      url,
      `SELECT * FROM "${relation.schema}"."${relation.name}" ORDER BY 1`,
    );
  }
  return { relations, schemas, rows };
}
