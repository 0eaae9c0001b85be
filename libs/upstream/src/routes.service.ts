import { Inject, Injectable, Logger, OnApplicationShutdown, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { KEYHOLE_CONFIG, KeyholeConfig } from '@keyhole/config';
import { KeyholeError } from '@keyhole/core';
import { loadRoutesFile, RoutesFileError } from './routes-file';
import { decideRoute, RouteDecision, Routes } from './routes';
import type { Registry } from 'prom-client';
import { SshNodePool } from './ssh-nodes';

/**
 * The process's routes table (KEYHOLE_ROUTES_FILE), which is also its allow-list of console
 * destinations: the token API issues no token, and a proxy dials no destination, that matches no
 * route. Without a routes file every destination is allowed, as before routes existed, and a
 * warning says so at start.
 *
 * SIGHUP reloads the file. A file that cannot be used is refused with an error line naming each
 * problem, and the table in use stays; a good one replaces it for the next check (live sessions
 * are not affected). A bad file at start stops the process.
 *
 * It also owns the process's SSH proxy node connections (`sshNodes`), which ssh routes dial
 * through: a reload keeps the connections of unchanged nodes and retires the others once idle;
 * shutdown closes them.
 */
@Injectable()
export class RoutesService implements OnModuleInit, OnModuleDestroy, OnApplicationShutdown {
  private readonly logger = new Logger('Routes');
  private readonly file: string | undefined;
  private routes: Routes | undefined;
  /** Connections to the ssh routes' proxy nodes, in a proxy (see dialSshNodes); made when a console first needs one. */
  private sshNodes: SshNodePool | undefined;
  /** Reloads run one after the other, so the last SIGHUP's file is the one in use. */
  private reloading: Promise<unknown> = Promise.resolve();

  constructor(@Inject(KEYHOLE_CONFIG) config: KeyholeConfig) {
    this.file = config.routes.file;
  }

  async onModuleInit(): Promise<void> {
    if (this.file === undefined) {
      this.logger.warn(
        "no routes file (KEYHOLE_ROUTES_FILE): every console destination is allowed, including this deployment's own services",
      );
    } else {
      this.routes = await loadRoutesFile(this.file, { sshNodes: this.sshNodes });
      this.logger.log({ file: this.file, routes: this.routes.size }, 'routes loaded');
    }
    process.on('SIGHUP', this.onHangup);
  }

  onModuleDestroy(): void {
    process.off('SIGHUP', this.onHangup);
  }

  /**
   * Closes the node connections last: the proxy drains its sessions in beforeApplicationShutdown,
   * which Nest runs after onModuleDestroy, and sessions through a node live on its connection.
   */
  onApplicationShutdown(): void {
    this.sshNodes?.close();
  }

  /**
   * Makes this process dial ssh routes (the console proxy; call before module init): their keys are
   * read with the routes file, and node metrics join `registry`. Other processes (the token API)
   * validate ssh routes without ever holding a key.
   */
  dialSshNodes(registry: Registry): void {
    if (this.sshNodes === undefined) {
      this.sshNodes = new SshNodePool();
      this.sshNodes.registerMetrics(registry);
    }
  }

  /** Whether a routes file is in use (else every destination is allowed). */
  get configured(): boolean {
    return this.routes !== undefined;
  }

  /** The table in use, or undefined without a routes file. */
  get current(): Routes | undefined {
    return this.routes;
  }

  /** Which route `host:port` takes, or that it is not routable. */
  decide(host: string, port: number): RouteDecision {
    return decideRoute(this.routes, host, port);
  }

  /** Throws UNROUTABLE_CONSOLE when no route allows `host:port`. */
  assertRoutable(host: string, port: number): void {
    if (!this.decide(host, port).routable) {
      throw new KeyholeError('UNROUTABLE_CONSOLE', `No route of the console proxies allows ${host}:${port}`, {
        details: { host, port },
        logLevel: 'warn',
      });
    }
  }

  /**
   * Reads the routes file again: true when its table is now in use, false when it was refused (the
   * previous table stays) or there is no file to read.
   */
  reload(): Promise<boolean> {
    const next = this.reloading.then(() => this.reloadNow());
    this.reloading = next;
    return next;
  }

  private async reloadNow(): Promise<boolean> {
    if (this.file === undefined) {
      this.logger.warn('SIGHUP: no routes file to reload (KEYHOLE_ROUTES_FILE is not set); every console destination stays allowed');
      return false;
    }
    try {
      this.routes = await loadRoutesFile(this.file, { sshNodes: this.sshNodes });
      this.sshNodes?.retainOnly(this.routes.list);
    } catch (error) {
      const problems = error instanceof RoutesFileError ? error.problems : [String(error)];
      this.logger.error({ file: this.file, problems, routes: this.routes?.size }, 'routes file refused: the previous routes stay in use');
      return false;
    }
    this.logger.log({ file: this.file, routes: this.routes.size }, 'routes reloaded');
    return true;
  }

  private readonly onHangup = (): void => {
    void this.reload();
  };
}
