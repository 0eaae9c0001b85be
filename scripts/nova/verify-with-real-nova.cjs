#!/usr/bin/env node
/*
 * Checks keyhole against a REAL Nova (Debian's python3-nova; /usr/bin/nova-manage and
 * /usr/bin/python3 with the `nova` package) on the local PostgreSQL, in both orders:
 *
 *   nova-first:    nova-manage db sync --local_cell, Nova writes a token, keyhole migrates the cell
 *   keyhole-first: keyhole migrates the cell, nova-manage db sync --local_cell, Nova writes a token
 *
 * and in each: keyhole's token API introspects Nova's token, keyhole's console proxy opens a
 * websocket with it to a TCP echo server, keyhole issues a token through its API that Nova's
 * ConsoleAuthToken.validate accepts, and Nova's clean_expired_console_auths and
 * clean_console_auths_for_instance work on the shared table. Prints what it did and saw; exits 1
 * on the first failed check. Needs `npm run build`. Creates and drops its own databases.
 *
 *   node scripts/nova/verify-with-real-nova.cjs [postgres://postgres@127.0.0.1:5432]
 */
'use strict';
const { execFileSync, spawn } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');
const { Client } = require('pg');
const WebSocket = require('ws');

const ROOT = path.resolve(__dirname, '../..');
const SERVER = (process.argv[2] ?? 'postgres://postgres@127.0.0.1:5432').replace(/\/$/, '');
const NOVA_TOKENS = path.join(__dirname, 'nova_console_tokens.py');
const suffix = `${process.pid}`;
const CONTROL = `keyhole_nova_verify_control_${suffix}`;
const children = [];
const databases = [];

function log(...parts) {
  console.log(...parts);
}

function check(condition, what) {
  if (!condition) {
    throw new Error(`FAILED: ${what}`);
  }
  log(`  ok: ${what}`);
}

async function sql(database, text, values = []) {
  const client = new Client({ connectionString: `${SERVER}/${database}` });
  await client.connect();
  try {
    return (await client.query(text, values)).rows;
  } finally {
    await client.end();
  }
}

async function createDatabase(name) {
  await sql('postgres', `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
  await sql('postgres', `CREATE DATABASE "${name}"`);
  databases.push(name);
}

function novaManageDbSync(database) {
  const conf = path.join(require('node:os').tmpdir(), `nova-verify-${database}.conf`);
  const url = `postgresql+psycopg2://${SERVER.replace(/^postgres(ql)?:\/\//, '')}/${database}`;
  require('node:fs').writeFileSync(conf, `[database]\nconnection = ${url}\n[api_database]\nconnection = ${url}\n`);
  log(`  $ nova-manage --config-file ${conf} db sync --local_cell`);
  execFileSync('/usr/bin/nova-manage', ['--config-file', conf, 'db', 'sync', '--local_cell'], { stdio: 'pipe' });
}

function novaCode(database, ...args) {
  const url = `postgresql+psycopg2://${SERVER.replace(/^postgres(ql)?:\/\//, '')}/${database}`;
  const out = execFileSync('/usr/bin/python3', [NOVA_TOKENS, '--database-url', url, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  return JSON.parse(out.toString());
}

function keyhole(args, environment) {
  log(`  $ keyhole ${args.join(' ')}`);
  return execFileSync(process.execPath, [path.join(ROOT, 'bin/keyhole'), ...args], {
    env: { PATH: process.env.PATH, KEYHOLE_LOG_LEVEL: 'warn', ...environment },
    stdio: ['ignore', 'pipe', 'pipe'],
  }).toString();
}

/** Starts a compiled keyhole app and resolves with its port once its log says it listens. */
function startApp(main, environment, listening) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(ROOT, main)], {
      env: { PATH: process.env.PATH, KEYHOLE_LOG_LEVEL: 'info', ...environment },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let output = '';
    const timer = setTimeout(() => reject(new Error(`${main} did not listen:\n${output}`)), 20_000);
    const onData = (chunk) => {
      output += chunk.toString();
      const match = listening.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve({ port: Number(match[1]), output: () => output });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => reject(new Error(`${main} exited (${code}):\n${output}`)));
  });
}

function echoServer() {
  return new Promise((resolve) => {
    const server = net.createServer((socket) => socket.pipe(socket));
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

/** Opens the proxy's websocket with `token`, sends a line, and resolves with what came back. */
function throughProxy(proxyPort, token) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${proxyPort}/websockify?token=${encodeURIComponent(token)}`, ['binary'], {
      headers: { Origin: `http://127.0.0.1:${proxyPort}` },
    });
    ws.once('unexpected-response', (_request, response) => reject(new Error(`proxy answered ${response.statusCode}`)));
    ws.once('error', reject);
    ws.once('open', () => ws.send(Buffer.from('hello through keyhole')));
    ws.once('message', (data) => {
      ws.close();
      resolve(Buffer.from(data).toString());
    });
  });
}

async function api(port, method, route, key, body) {
  const response = await fetch(`http://127.0.0.1:${port}${route}`, {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: response.status, body: await response.json() };
}

async function scenario(order, echo) {
  const cellName = order === 'nova-first' ? 'novafirst' : 'keyholefirst';
  const cellDatabase = `keyhole_nova_verify_${cellName}_${suffix}`;
  const environment = { KEYHOLE_DATABASE_URL: `${SERVER}/${CONTROL}` };
  log(`\n== ${order}: cell ${cellName}, database ${cellDatabase}`);
  await createDatabase(cellDatabase);
  const cellUrl = `${SERVER}/${cellDatabase}`;
  const instance = require('node:crypto').randomUUID();
  let novaToken;
  let earlier;
  const addCell = () =>
    keyhole(['cells', 'add', cellName, '--database-url', cellUrl, '--proxy-url', 'http://127.0.0.1:1'], environment).trim();
  const startApps = async () => {
    const operatorKey = /(khk_\S+)/.exec(
      keyhole(['credentials', 'create', '--role', 'operator', '--name', `op-${cellName}`], environment),
    )[1];
    const agentKey = /(khk_\S+)/.exec(
      keyhole(['credentials', 'create', '--role', 'agent', '--cell', cellName, '--name', `agent-${cellName}`], environment),
    )[1];
    const tokenApi = await startApp(
      'dist/apps/token-api/src/main.js',
      { ...environment, KEYHOLE_API_HOST: '127.0.0.1', KEYHOLE_API_PORT: '0', KEYHOLE_PURGE_INTERVAL_MS: '0' },
      /"port":(\d+),"msg":"token API listening"/,
    );
    const proxy = await startApp(
      'dist/apps/console-proxy/src/main.js',
      { KEYHOLE_CELL_NAME: cellName, KEYHOLE_CELL_DATABASE_URL: cellUrl, KEYHOLE_PROXY_PORT: '0', KEYHOLE_PROXY_HOST: '127.0.0.1' },
      /"port":(\d+),"msg":"console proxy listening"/,
    );
    return { operatorKey, agentKey, tokenApi, proxy };
  };
  let apps;
  if (order === 'nova-first') {
    novaManageDbSync(cellDatabase);
    novaToken = novaCode(
      cellDatabase,
      'authorize',
      '--instance-uuid',
      instance,
      '--host',
      '127.0.0.1',
      '--port',
      String(echo.address().port),
    );
    log(`  Nova's ConsoleAuthToken.authorize wrote token id ${novaToken.id}`);
    log(`  ${addCell()}`);
    apps = await startApps();
  } else {
    log(`  ${addCell()}`);
    // keyhole runs, and issues a token, before Nova's table exists.
    apps = await startApps();
    earlier = await api(apps.tokenApi.port, 'POST', `/v1/cells/${cellName}/tokens`, apps.agentKey, {
      instanceUuid: instance,
      consoleType: 'novnc',
      host: '127.0.0.1',
      port: echo.address().port,
    });
    check(earlier.status === 201, "keyhole issues a token before Nova has a table (into keyhole's own)");
    await throughProxy(apps.proxy.port, 'not-a-token').then(
      () => check(false, 'a bogus token is refused'),
      (error) => check(/401/.test(error.message), 'the running proxy refuses a bogus token (401)'),
    );
    novaManageDbSync(cellDatabase);
    log('  nova-manage db sync succeeded on the database keyhole had migrated, keyhole running');
    novaToken = novaCode(
      cellDatabase,
      'authorize',
      '--instance-uuid',
      instance,
      '--host',
      '127.0.0.1',
      '--port',
      String(echo.address().port),
    );
    log(`  Nova's ConsoleAuthToken.authorize wrote token id ${novaToken.id}`);
  }
  const { operatorKey, agentKey, tokenApi, proxy } = apps;
  const tables = await sql(
    cellDatabase,
    `SELECT schemaname || '.' || tablename AS t FROM pg_tables WHERE schemaname IN ('public', 'keyhole') ORDER BY 1`,
  );
  log(
    `  keyhole tables: ${tables
      .filter((row) => row.t.startsWith('keyhole.'))
      .map((row) => row.t)
      .join(', ')}`,
  );
  check(
    tables.every(
      (row) => row.t.startsWith('keyhole.') || !/keyhole|console_sessions|cell_settings|revoked_token_hashes|extras/.test(row.t),
    ),
    'nothing of keyhole in public',
  );
  const columns = await sql(
    cellDatabase,
    `SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'console_auth_tokens' ORDER BY ordinal_position`,
  );
  log(`  Nova's console_auth_tokens columns: ${columns.map((row) => row.column_name).join(', ')}`);
  const introspected = await api(tokenApi.port, 'POST', '/v1/tokens/introspect', operatorKey, { token: novaToken.token, cell: cellName });
  check(
    introspected.status === 200 && introspected.body.console.instance_uuid === instance,
    `keyhole's API introspects Nova's token (${introspected.status})`,
  );
  const echoed = await throughProxy(proxy.port, novaToken.token);
  check(echoed === 'hello through keyhole', "keyhole's proxy opens a console with Nova's token (echo came back)");

  const issued = await api(tokenApi.port, 'POST', `/v1/cells/${cellName}/tokens`, agentKey, {
    instanceUuid: instance,
    consoleType: 'novnc',
    host: '127.0.0.1',
    port: echo.address().port,
  });
  check(issued.status === 201, `keyhole's API issues a token into the cell (${issued.status})`);
  const validatedKeyhole = novaCode(cellDatabase, 'validate', '--token', issued.body.token);
  check(validatedKeyhole.valid && validatedKeyhole.id === issued.body.id, "Nova's ConsoleAuthToken.validate accepts keyhole's token");
  const validatedNova = novaCode(cellDatabase, 'validate', '--token', novaToken.token);
  check(validatedNova.valid && validatedNova.id === novaToken.id, "Nova's ConsoleAuthToken.validate still accepts Nova's token");
  check(
    (await throughProxy(proxy.port, issued.body.token)) === 'hello through keyhole',
    "keyhole's proxy opens a console with keyhole's token",
  );

  if (earlier) {
    const stranded = await (await fetch(`http://127.0.0.1:${proxy.port}/readyz`)).json();
    check(
      stranded.strandedTokens === 1,
      `readiness reports the token keyhole issued before Nova's table as stranded (${JSON.stringify(stranded)})`,
    );
    check(
      !novaCode(cellDatabase, 'validate', '--token', earlier.body.token).valid,
      "Nova does not see it yet (it is in keyhole's own table)",
    );
    const migrated = keyhole(['migrate'], environment);
    log(`  ${migrated.trim().replace(/\n/g, '\n  ')}`);
    check(
      migrated.includes(`cell ${cellName}: adopted 1 tokens into Nova's console_auth_tokens`),
      'keyhole migrate says it adopted the stranded token',
    );
    const adopted = novaCode(cellDatabase, 'validate', '--token', earlier.body.token);
    check(adopted.valid, `after keyhole migrate, Nova's validate accepts it (adopted into Nova's table as id ${adopted.id})`);
    check(
      (await throughProxy(proxy.port, earlier.body.token)) === 'hello through keyhole',
      "keyhole's proxy opens a console with the adopted token",
    );
  }
  const expired = novaCode(cellDatabase, 'authorize', '--host', '127.0.0.1', '--port', '5999', '--ttl', '-10');
  novaCode(cellDatabase, 'clean-expired');
  check(
    (await sql(cellDatabase, 'SELECT 1 FROM public.console_auth_tokens WHERE id = $1', [expired.id])).length === 0,
    "Nova's clean_expired_console_auths deleted the expired token",
  );
  check(
    (await sql(cellDatabase, 'SELECT count(*)::int AS n FROM public.console_auth_tokens WHERE instance_uuid = $1', [instance]))[0].n ===
      (earlier ? 3 : 2),
    earlier ? 'and kept the three valid ones' : 'and kept the two valid ones',
  );
  novaCode(cellDatabase, 'clean-instance', '--instance-uuid', instance);
  check(
    (await sql(cellDatabase, 'SELECT count(*)::int AS n FROM public.console_auth_tokens WHERE instance_uuid = $1', [instance]))[0].n === 0,
    "Nova's clean_console_auths_for_instance deleted Nova's and keyhole's tokens of the instance",
  );
  const after = await api(tokenApi.port, 'POST', '/v1/tokens/introspect', operatorKey, { token: novaToken.token, cell: cellName });
  check(after.status === 404, `keyhole no longer finds the cleaned token (${after.status})`);
  const ready = await fetch(`http://127.0.0.1:${proxy.port}/readyz`);
  check(ready.status === 200, 'the proxy is ready');
  for (const child of children.splice(0)) {
    child.kill('SIGTERM');
  }
}

async function main() {
  const version = execFileSync('/usr/bin/python3', ['-c', 'import nova.version; print(nova.version.version_string())']).toString().trim();
  log(`Nova ${version}, PostgreSQL at ${SERVER}`);
  await createDatabase(CONTROL);
  keyhole(['migrate'], { KEYHOLE_DATABASE_URL: `${SERVER}/${CONTROL}` });
  const echo = await echoServer();
  try {
    await scenario('nova-first', echo);
    await scenario('keyhole-first', echo);
    log('\nall checks passed');
  } finally {
    echo.close();
    for (const child of children) {
      child.kill('SIGTERM');
    }
    for (const name of databases) {
      await sql('postgres', `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`).catch(() => undefined);
    }
  }
}

main().catch((error) => {
  console.error(error.message);
  process.exitCode = 1;
});
