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
  it('lists the columns of every property, or of the ones asked for, in that order', () => {
    expect(samples.columnList()).toBe('sample_id, display_name');
    expect(samples.columnList(['name', 'id'])).toBe('display_name, sample_id');
  });

  it('reads a row into an instance of the entity, converting the columns that say how', () => {
    const sample = samples.fromRow({ sample_id: '7', display_name: null });
    expect(sample).toBeInstanceOf(Sample);
    expect(sample).toEqual({ id: 7, name: null });
  });

  it('picks only the properties asked for', () => {
    expect(samples.pick({ sample_id: '7' }, ['id'])).toStrictEqual({ id: 7 });
  });
});

describe('consoleAuthTokenRows', () => {
  const row = {
    id: '42',
    token_hash: 'a'.repeat(64),
    console_type: 'novnc',
    host: 'hv1',
    port: 5900,
    tls_port: null,
    internal_access_path: null,
    instance_uuid: '00000000-0000-4000-8000-000000000001',
    expires: '2000000000',
    access_url_base: 'https://console.example.com/vnc_lite.html',
    created_at: new Date('2026-01-01T00:00:00Z'),
    updated_at: null,
    row_version: 1,
    object_version: '1.4',
    issued_by: null,
  };

  it('reads int8 ids and expiries (strings from pg) as numbers', () => {
    const token = consoleAuthTokenRows.fromRow(row);
    expect(token).toBeInstanceOf(ConsoleAuthTokenEntity);
    expect(token).toMatchObject({ id: 42, expires: 2_000_000_000, tokenHash: row.token_hash, createdAt: row.created_at, tlsPort: null });
  });

  it('refuses an int8 beyond 2^53 rather than rounding it', () => {
    expect(() => consoleAuthTokenRows.fromRow({ ...row, id: '9007199254740993' })).toThrow(RangeError);
  });
});
