export * from './upstream.errors';
export * from './upstream-connector';
export * from './connect-turns';
export * from './port-ranges';
export * from './routes';
export * from './routes-file';
export * from './routes.service';
export * from './upstream.module';
