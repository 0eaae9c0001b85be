export * from './console-bridge';
export * from './console-events.listener';
export * from './console-proxy';
export * from './handshake-rules';
export * from './live-session';
export * from './proxy.metrics';
export * from './session-registry';
