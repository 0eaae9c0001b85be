import { Controller, Get, Header, HttpCode, Res } from '@nestjs/common';
import { Registry } from 'prom-client';
import type { FastifyReply } from 'fastify';
import { ControlDatabase } from '@keyhole/db';
import { Public } from '../http/auth.guard';

/** Liveness (the process answers), readiness (the control database answers) and Prometheus metrics. */
@Controller()
export class HealthController {
  constructor(
    private readonly control: ControlDatabase,
    private readonly registry: Registry,
  ) {}

  @Get('healthz')
  @Public()
  @HttpCode(200)
  live() {
    return { status: 'ok' };
  }

  @Get('metrics')
  @Public()
  @Header('Cache-Control', 'no-store')
  async metrics(@Res() response: FastifyReply): Promise<void> {
    await response.header('Content-Type', this.registry.contentType).send(await this.registry.metrics());
  }

  @Get('readyz')
  @Public()
  async ready(@Res({ passthrough: true }) response: FastifyReply) {
    const reachable = await this.control.isReachable();
    void response.status(reachable ? 200 : 503);
    return { status: reachable ? 'ready' : 'unavailable', controlDatabase: reachable };
  }
}
