// The token API's HTTP application: its Nest module and the bootstrap that production
// (apps/token-api), the local deployment (apps/cli) and the e2e tests share.
export * from './token-api.module';
export * from './bootstrap';
