export type { LegacyAuthorization, LegacyFormat, LegacyWrite } from './legacy-formats';
export { MAX_LEGACY_VALUE_BYTES, NO_INSTANCE_UUID, osloCacheKey, WEBSOCKIFY_CONSOLE_TYPE } from './legacy-formats';
export * from './legacy-store.errors';
export * from './legacy-token-store';
export * from './legacy-store.module';
