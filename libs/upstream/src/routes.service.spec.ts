import { Logger } from '@nestjs/common';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '@keyhole/config';
import { KeyholeError } from '@keyhole/core';
import { RoutesFileError } from './routes-file';
import { RoutesService } from './routes.service';

const RACK1 = 'routes:\n  - name: rack1\n    match: { cidr: 169.254.10.0/24, ports: "5900-5999" }\n    via: direct\n';
const RACK2 = 'routes:\n  - name: rack2\n    match: { cidr: 169.254.20.0/24 }\n    via: direct\n';

describe('RoutesService', () => {
  let dir: string;
  let file: string;
  let logged: { level: string; args: unknown[] }[];
  const services: RoutesService[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'keyhole-routes-'));
    file = path.join(dir, 'routes.yaml');
    logged = [];
    for (const level of ['log', 'warn', 'error'] as const) {
      jest.spyOn(Logger.prototype, level).mockImplementation((...args: unknown[]) => void logged.push({ level, args }));
    }
  });

  afterEach(async () => {
    for (const service of services.splice(0)) {
      service.onModuleDestroy();
    }
    jest.restoreAllMocks();
    await rm(dir, { recursive: true, force: true });
  });

  async function started(routesFile: string | undefined): Promise<RoutesService> {
    const service = new RoutesService(loadConfig(routesFile === undefined ? {} : { KEYHOLE_ROUTES_FILE: routesFile }));
    services.push(service);
    await service.onModuleInit();
    return service;
  }

  it('without a routes file allows every destination, and warns at start that it does', async () => {
    const service = await started(undefined);
    expect(service.configured).toBe(false);
    expect(service.decide('127.0.0.1', 5432)).toEqual({ routable: true, route: undefined });
    expect(() => service.assertRoutable('127.0.0.1', 5432)).not.toThrow();
    expect(logged).toEqual([{ level: 'warn', args: [expect.stringContaining('every console destination is allowed')] }]);
  });

  it('with a routes file allows what a route matches and refuses the rest with UNROUTABLE_CONSOLE', async () => {
    await writeFile(file, RACK1);
    const service = await started(file);
    expect(logged).toEqual([{ level: 'log', args: [{ file, routes: 1 }, 'routes loaded'] }]);
    expect(service.decide('169.254.10.5', 5901)).toMatchObject({ routable: true, route: { name: 'rack1' } });
    expect(service.decide('169.254.10.5', 5432)).toEqual({ routable: false });
    let refused: unknown;
    try {
      service.assertRoutable('169.254.10.5', 5432);
    } catch (error) {
      refused = error;
    }
    expect(refused).toBeInstanceOf(KeyholeError);
    expect(refused).toMatchObject({ code: 'UNROUTABLE_CONSOLE', details: { host: '169.254.10.5', port: 5432 } });
    expect((refused as Error).message).toContain('169.254.10.5:5432');
  });

  it('refuses to start on a bad file', async () => {
    await writeFile(file, RACK1.replace('5900-5999', '5900-'));
    await expect(started(file)).rejects.toThrow(RoutesFileError);
    await expect(started(path.join(dir, 'missing.yaml'))).rejects.toThrow(/cannot be read \(ENOENT\)/);
  });

  it('reloads on SIGHUP; a bad file is refused with an error line and the table in use stays', async () => {
    await writeFile(file, RACK1);
    const service = await started(file);

    await writeFile(file, RACK2);
    expect(await service.reload()).toBe(true);
    expect(service.decide('169.254.10.5', 5901)).toEqual({ routable: false });
    expect(service.decide('169.254.20.5', 22)).toMatchObject({ routable: true, route: { name: 'rack2' } });
    expect(logged.at(-1)).toEqual({ level: 'log', args: [{ file, routes: 1 }, 'routes reloaded'] });

    await writeFile(file, RACK1.replace('via: direct', 'via: { connector: mgmt.sock }'));
    expect(await service.reload()).toBe(false);
    expect(service.decide('169.254.20.5', 22)).toMatchObject({ routable: true, route: { name: 'rack2' } });
    expect(logged.at(-1)).toEqual({
      level: 'error',
      args: [
        { file, routes: 1, problems: [expect.stringMatching(/:4: routes\[0\]\.via: connector: must be the absolute path/)] },
        'routes file refused: the previous routes stay in use',
      ],
    });

    // The signal itself: the same reload.
    await writeFile(file, RACK1);
    process.emit('SIGHUP', 'SIGHUP');
    await service.reload();
    expect(service.decide('169.254.10.5', 5901)).toMatchObject({ routable: true, route: { name: 'rack1' } });
  });
});
