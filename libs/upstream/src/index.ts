export * from './upstream.errors';
export * from './upstream-connector';
