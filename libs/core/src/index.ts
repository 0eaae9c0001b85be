export * from './keyhole.error';
export * from './clock';
export * from './secrets';
export * from './core.module';
export * from './console-types';
export * from './field-schemas';
export * from './presented-token';
export * from './raw-http-answer';
