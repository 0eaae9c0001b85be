import { KeyholeConfig, loadConfig } from '@keyhole/config';

/**
 * Configuration as a deployment would load it, with tiny argon2 parameters (hashing is not what
 * these tests measure) and a free port.
 */
export function testConfig(controlUrl: string, environment: Record<string, string> = {}): KeyholeConfig {
  return loadConfig({
    KEYHOLE_DATABASE_URL: controlUrl,
    KEYHOLE_API_PORT: '0',
    KEYHOLE_DB_POOL_SIZE: '4',
    KEYHOLE_ARGON2_MEMORY_KIB: '64',
    KEYHOLE_ARGON2_TIME_COST: '1',
    KEYHOLE_ARGON2_PARALLELISM: '1',
    KEYHOLE_LOG_LEVEL: 'debug',
    ...environment,
  });
}
