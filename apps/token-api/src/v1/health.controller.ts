import { Controller, Get, HttpCode, Res } from '@nestjs/common';
import type { Response } from 'express';
import { ControlDatabase } from '@keyhole/db';
import { Public } from '../http/auth.guard';

/** Liveness (the process answers) and readiness (the control database answers). */
@Controller()
export class HealthController {
  constructor(private readonly control: ControlDatabase) {}

  @Get('healthz')
  @Public()
  @HttpCode(200)
  live() {
    return { status: 'ok' };
  }

  @Get('readyz')
  @Public()
  async ready(@Res({ passthrough: true }) response: Response) {
    const reachable = await this.control.isReachable();
    response.status(reachable ? 200 : 503);
    return { status: reachable ? 'ready' : 'unavailable', controlDatabase: reachable };
  }
}
