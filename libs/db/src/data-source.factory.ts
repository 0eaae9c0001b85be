import { types } from 'pg';
import { DataSource, DataSourceOptions } from 'typeorm';
import { CELL_MIGRATIONS, CONTROL_MIGRATIONS } from '@keyhole/migrations';
import { ApiCredentialEntity } from './control/api-credential.entity';
import { CellEntity } from './control/cell.entity';
import { CellSettingEntity } from './cell/cell-setting.entity';
import { ConsoleAuthTokenEntity } from './cell/console-auth-token.entity';
import { ConsoleSessionEntity } from './cell/console-session.entity';

// Nova's created_at/updated_at are `timestamp without time zone` holding UTC. pg would read them
// in the process's local zone; read them as UTC whatever TZ the process runs in.
types.setTypeParser(types.builtins.TIMESTAMP, (value: string) => new Date(`${value.replace(' ', 'T')}Z`));

export type DatabaseKind = 'control' | 'cell';

export interface DataSourceSettings {
  url: string;
  /** Connections in this pool. */
  poolSize: number;
  connectTimeoutMs: number;
  statementTimeoutMs: number;
  /** Shown in pg_stat_activity, e.g. `keyhole-api` or `keyhole-proxy:cell1`. */
  applicationName: string;
}

export const CONTROL_ENTITIES = [CellEntity, ApiCredentialEntity];
export const CELL_ENTITIES = [ConsoleAuthTokenEntity, ConsoleSessionEntity, CellSettingEntity];

/** A DataSource (not yet initialized) for a control or cell database. Never `synchronize`. */
export function createDataSource(kind: DatabaseKind, settings: DataSourceSettings): DataSource {
  const options: DataSourceOptions = {
    type: 'postgres',
    url: settings.url,
    entities: kind === 'control' ? CONTROL_ENTITIES : CELL_ENTITIES,
    migrations: kind === 'control' ? CONTROL_MIGRATIONS : CELL_MIGRATIONS,
    migrationsTableName: 'keyhole_migrations',
    synchronize: false,
    migrationsRun: false,
    logging: false,
    applicationName: settings.applicationName,
    connectTimeoutMS: settings.connectTimeoutMs,
    poolSize: settings.poolSize,
    extra: {
      statement_timeout: settings.statementTimeoutMs,
      // A dead server must not leave a request waiting forever for a pooled connection.
      connectionTimeoutMillis: settings.connectTimeoutMs,
    },
  };
  return new DataSource(options);
}

/** Hide the password of a database URL for logs and API answers. */
export function redactDatabaseUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(unparseable database URL)';
  }
}
