import path from 'node:path';
import { z } from 'zod';
import { Command, parseFlags, validated } from './command';

export const localCommand: Command = {
  name: 'local',
  usage: 'keyhole local [--data-dir DIR] [--api-port PORT] [--proxy-ports PORT1,PORT2]',
  summary: 'run a whole deployment on this machine (what `npm start` does): PostgreSQL, two cells with a console proxy each, the token API',
  async run({ args, config, out }) {
    const { values } = parseFlags(args, {
      'data-dir': { type: 'string' },
      'api-port': { type: 'string' },
      'proxy-ports': { type: 'string' },
    });
    const dataDir = path.resolve(values['data-dir'] ?? path.join(process.cwd(), '.keyhole', 'local'));
    const apiPort = validated(z.coerce.number().int().min(0).max(65535), values['api-port'] ?? String(config.api.port), '--api-port');
    const proxyPorts =
      values['proxy-ports'] === undefined
        ? undefined
        : validated(
            z
              .string()
              .regex(/^\d{1,5},\d{1,5}$/, 'two ports, comma separated')
              .transform((v) => v.split(',').map(Number))
              .pipe(z.array(z.number().max(65535))),
            values['proxy-ports'],
            '--proxy-ports',
          );
    const { LOCAL_CELLS, startLocalDeployment } = loadLocalDeployment();
    const deployment = await startLocalDeployment({
      dataDir,
      databaseUrl: config.database.controlUrl,
      apiPort,
      proxyPorts,
      routesFile: config.routes.file,
      environment: process.env,
      onProgress: (line) => out(`  ${line}`),
    });
    const example = `curl -s -X POST ${deployment.apiUrl}/v1/cells/cell1/tokens \\\n    -H "Authorization: Bearer $KEYHOLE_AGENT_KEY" -H 'Content-Type: application/json' \\\n    -d '{"instanceUuid":"6f1c2b7e-3d4a-4b5c-9d8e-7f6a5b4c3d2e","consoleType":"novnc","host":"127.0.0.1","port":5900}'`;
    out('');
    out('keyhole is running');
    out(`  token API:       ${deployment.apiUrl}`);
    out(`  OpenAPI:         ${deployment.openApiUrl}`);
    out(
      `  databases:       ${deployment.controlDatabase} (control + ${LOCAL_CELLS.map((cell) => cell.name).join(', ')}), data in ${dataDir}`,
    );
    for (const cell of deployment.cells) {
      out(`  ${`${cell.name} proxy:`.padEnd(17)}${cell.proxyUrl} (noVNC ${cell.novncPage}, serial ${cell.serialPage})`);
    }
    out(`  routes:          ${deployment.routesFile} (consoles the API and the proxies allow; kill -HUP reloads it)`);
    out(`  log:             ${deployment.logFile}`);
    out(`  CLI:             KEYHOLE_DATABASE_URL="$(cat ${deployment.controlUrlFile})" node bin/keyhole cells list`);
    out('');
    out('API keys (new at every start; the previous local keys are revoked):');
    out(`  operator (every cell):  ${deployment.operatorKey}`);
    for (const [cell, key] of Object.entries(deployment.agentKeys)) {
      out(`  ${`agent ${cell}:`.padEnd(24)}${key}`);
    }
    out('');
    out('Try it:');
    out(`  export KEYHOLE_AGENT_KEY=${deployment.agentKeys.cell1}`);
    out(`  ${example}`);
    out('');
    out('Ctrl-C stops everything.');
    await new Promise<void>((resolve) => {
      const shutdown = () => {
        process.off('SIGINT', shutdown);
        process.off('SIGTERM', shutdown);
        resolve();
      };
      process.on('SIGINT', shutdown);
      process.on('SIGTERM', shutdown);
    });
    out('stopping...');
    await deployment.stop();
    return 0;
  },
};

/**
 * The local deployment brings embedded PostgreSQL and both apps' HTTP stacks (Nest's Express and
 * Fastify platforms): loaded here, on demand, so that every other command (the production
 * `keyhole migrate` Job above all) loads none of them. A plain require: this is CommonJS output.
 */
function loadLocalDeployment(): typeof import('../local/local-deployment') {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require('../local/local-deployment') as typeof import('../local/local-deployment');
}
