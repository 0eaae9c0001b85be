import { Controller, Get } from '@nestjs/common';
import { Public } from '../http/auth.guard';
import { buildOpenApiDocument } from './openapi.document';

/** Serves the OpenAPI document of /v1 (built once). */
@Controller('v1')
export class OpenApiController {
  private readonly document = buildOpenApiDocument();

  @Get('openapi.json')
  @Public()
  get(): object {
    return this.document;
  }
}
