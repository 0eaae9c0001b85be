import { Module } from '@nestjs/common';
import { RoutesService } from './routes.service';

/** The routes table of a process (its allow-list of console destinations). Needs `ConfigModule`. */
@Module({
  providers: [RoutesService],
  exports: [RoutesService],
})
export class UpstreamModule {}
