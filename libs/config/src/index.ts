export * from './keyhole.config';
export * from './config.module';
