// The console proxy application of one cell: its Nest module, runtime and bootstrap, and the worker
// supervisor, shared by production (apps/console-proxy), the local deployment (apps/cli) and tests.
export * from './proxy-app.module';
export * from './proxy-runtime';
export * from './bootstrap';
export { isProxyWorker, superviseWorkers, workerId } from './workers';
