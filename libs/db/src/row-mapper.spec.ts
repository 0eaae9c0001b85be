import { ConsoleAuthTokenEntity, consoleAuthTokenRows } from './cell/console-auth-token.entity';
import { RowMapper } from './row-mapper';

class Sample {
  id!: number;
  name!: string | null;
}

const samples = new RowMapper(Sample, {
  id: { column: 'sample_id', read: (value) => Number(value) },
  name: { column: 'display_name' },
});

describe('RowMapper', () => {
  it('selects every column under its property name, and names the columns alone for an INSERT', () => {
    expect(samples.selectList()).toBe('sample_id AS "id", display_name AS "name"');
    expect(samples.columnNames(['name', 'id'])).toBe('display_name, sample_id');
  });

  it('reads a row so selected into an instance of the entity, converting the columns that say how', () => {
    const sample = samples.fromRow({ id: '7', name: null });
    expect(sample).toBeInstanceOf(Sample);
    expect(sample).toEqual({ id: 7, name: null });
  });

  it('selects and reads only the properties of a projection', () => {
    const ids = samples.projection(['id']);
    expect(ids.selectList).toBe('sample_id AS "id"');
    expect(ids.read({ id: '7' })).toStrictEqual({ id: 7 });
  });
});

describe('consoleAuthTokenRows', () => {
  // As pg returns it for `SELECT ${consoleAuthTokenRows(false).selectList()}`.
  const row = {
    id: '42',
    tokenHash: 'a'.repeat(64),
    consoleType: 'novnc',
    host: 'hv1',
    port: 5900,
    tlsPort: null,
    internalAccessPath: null,
    instanceUuid: '00000000-0000-4000-8000-000000000001',
    expires: '2000000000',
    accessUrlBase: 'https://console.example.com/vnc_lite.html',
    createdAt: new Date('2026-01-01T00:00:00Z'),
    updatedAt: null,
    objectVersion: '1.4',
    issuedBy: null,
  };

  it('reads int8 ids and expiries (strings from pg) as numbers', () => {
    const token = consoleAuthTokenRows(false).fromRow(row);
    expect(token).toBeInstanceOf(ConsoleAuthTokenEntity);
    expect(token).toMatchObject({ id: 42, expires: 2_000_000_000, tokenHash: row.tokenHash, createdAt: row.createdAt, tlsPort: null });
  });

  it("reads tls_port from the token table's column when it has one, else from keyhole's extras", () => {
    expect(consoleAuthTokenRows(true).selectList()).toContain('COALESCE(t.tls_port, x.tls_port) AS "tlsPort"');
    expect(consoleAuthTokenRows(false).selectList()).toContain('x.tls_port AS "tlsPort"');
    expect(consoleAuthTokenRows(false).selectList()).not.toContain('t.tls_port');
  });

  it('refuses an int8 beyond 2^53 rather than rounding it', () => {
    expect(() => consoleAuthTokenRows(false).fromRow({ ...row, id: '9007199254740993' })).toThrow(RangeError);
  });
});
