export * from './console-auth-token.object';
export * from './token-generator';
export * from './tokens.errors';
export * from './tokens.service';
export * from './tokens.module';
export * from './sessions.service';
export * from './purge.service';
export * from './fallback.service';
