export * from './upstream.errors';
export * from './upstream-connector';
export * from './connect-turns';
