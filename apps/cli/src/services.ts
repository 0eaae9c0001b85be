import { INestApplicationContext, LoggerService } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { KeyholeConfig, requireControlUrl } from '@keyhole/config';
import { createLogger, PinoNestLogger } from '@keyhole/observability';
import { CliModule } from './cli.module';

/**
 * Opens the services the commands use on the control database. Logs go to stderr, so stdout
 * carries only the command's answer (keys, tables, JSON).
 */
export function openServices(config: KeyholeConfig, logger?: LoggerService): Promise<INestApplicationContext> {
  // Fail with the configuration message before Nest logs a stack trace about it.
  requireControlUrl(config);
  logger ??= new PinoNestLogger(
    createLogger({ level: config.log.level === 'info' ? 'warn' : config.log.level, name: 'keyhole-cli', destination: process.stderr }),
  );
  return NestFactory.createApplicationContext(CliModule.forRoot(config), { logger, abortOnError: false });
}
