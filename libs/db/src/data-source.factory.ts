import { DataSource, DataSourceOptions } from 'typeorm';
import { CELL_MIGRATIONS, CONTROL_MIGRATIONS } from '@keyhole/migrations';
import { ApiCredentialEntity } from './control/api-credential.entity';
import { CellEntity } from './control/cell.entity';
import { KEYHOLE_SCHEMA } from './cell/cell-schema';
import { CellSettingEntity } from './cell/cell-setting.entity';
import { ConsoleAuthTokenEntity } from './cell/console-auth-token.entity';
import { ConsoleSessionEntity } from './cell/console-session.entity';
import { DatabaseSettings } from './database-pool';

export type DatabaseKind = 'control' | 'cell';

export const CONTROL_ENTITIES = [CellEntity, ApiCredentialEntity];
export const CELL_ENTITIES = [ConsoleAuthTokenEntity, ConsoleSessionEntity, CellSettingEntity];

/**
 * A DataSource (not yet initialized) for a control or cell database: it runs the migrations.
 * The apps reach the tables through their own pg pools (createPool). Never `synchronize`.
 */
export function createDataSource(kind: DatabaseKind, settings: DatabaseSettings): DataSource {
  const options: DataSourceOptions = {
    type: 'postgres',
    url: settings.url,
    entities: kind === 'control' ? CONTROL_ENTITIES : CELL_ENTITIES,
    migrations: kind === 'control' ? CONTROL_MIGRATIONS : CELL_MIGRATIONS,
    migrationsTableName: 'keyhole_migrations',
    // A cell's keyhole tables, its migrations table included, live in keyhole's own schema (see
    // cell-schema.ts); TypeORM looks for its migrations table there.
    ...(kind === 'cell' ? { schema: KEYHOLE_SCHEMA } : {}),
    synchronize: false,
    migrationsRun: false,
    logging: false,
    applicationName: settings.applicationName,
    connectTimeoutMS: settings.connectTimeoutMs,
    poolSize: settings.poolSize,
    // Client-side deadlines as createPool's: a database that stops answering ends the run with an
    // error instead of hanging it.
    extra: {
      statement_timeout: settings.statementTimeoutMs,
      query_timeout: settings.queryTimeoutMs,
      connectionTimeoutMillis: settings.connectTimeoutMs,
    },
  };
  return new DataSource(options);
}

/** Hide the password of a database URL for logs and API answers. */
export function redactDatabaseUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) {
      parsed.password = '***';
    }
    return parsed.toString();
  } catch {
    return '(unparseable database URL)';
  }
}
