export type { LegacyAuthorization, LegacyFormat, LegacyWrite } from './legacy-formats';
export { isPresentableToken, MAX_LEGACY_TOKEN_LENGTH, MAX_LEGACY_VALUE_BYTES } from './legacy-formats';
export * from './legacy-store.errors';
export * from './legacy-token-store';
export * from './legacy-store.module';
