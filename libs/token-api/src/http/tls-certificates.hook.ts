import { Injectable, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { Registry } from 'prom-client';
import { watchCertificates } from '@keyhole/tls';

/** With KEYHOLE_API_TLS_*: the certificate's metrics, and its reload on SIGHUP. Nothing otherwise. */
@Injectable()
export class TlsCertificatesHook implements OnApplicationBootstrap, OnApplicationShutdown {
  private stopWatching: (() => void) | null = null;

  constructor(
    private readonly adapterHost: HttpAdapterHost,
    private readonly registry: Registry,
  ) {}

  onApplicationBootstrap(): void {
    this.stopWatching = watchCertificates(this.adapterHost.httpAdapter.getHttpServer(), this.registry);
  }

  onApplicationShutdown(): void {
    this.stopWatching?.();
    this.stopWatching = null;
  }
}
