export * from './api-key';
export * from './credentials.errors';
export * from './credentials.service';
export * from './credentials.module';
export * from './secret-hasher';
export * from './authentication-throttle';
