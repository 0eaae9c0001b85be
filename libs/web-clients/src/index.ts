export { createWebClientsRouter, describeWebClients, type WebClientsOptions } from './web-clients.router';
export { DEFAULT_SPICE_HTML5_DIR } from './client-packages';
export { fixedErrorBody, sendFixedError, type ProxyErrorBody } from './error-responses';
