export * from './keyhole.config';
export * from './config.module';
export * from './trusted-proxies';
