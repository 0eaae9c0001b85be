import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { capPendingConnections, type ConnectionCapReason } from './connection-caps';

describe('capPendingConnections', () => {
  let server: Server;
  let release: (socket: Duplex) => void;
  const refused: ConnectionCapReason[] = [];
  const accepted: Duplex[] = [];
  const clients: Socket[] = [];

  beforeEach(async () => {
    refused.length = 0;
    accepted.length = 0;
    server = createServer((_request, response) => response.end('ok'));
    release = capPendingConnections(server, { perAddress: 2, total: 3 }, (reason) => refused.push(reason));
    server.on('connection', (socket: Duplex) => accepted.push(socket));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  });

  afterEach(async () => {
    clients.splice(0).forEach((client) => client.destroy());
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  /** Connects and resolves with what the server answered once it closes (or '' while it stays open). */
  async function client(localAddress = '127.0.0.1'): Promise<{ socket: Socket; answer: Promise<string> }> {
    const socket = connect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port, localAddress });
    clients.push(socket);
    socket.on('error', () => undefined);
    let text = '';
    socket.on('data', (data: Buffer) => (text += data.toString()));
    const answer = new Promise<string>((resolve) => socket.on('close', () => resolve(text)));
    await new Promise((resolve) => socket.once('connect', resolve));
    return { socket, answer };
  }

  const served = async (count: number): Promise<void> => {
    while (accepted.length + refused.length < count) {
      await new Promise((resolve) => setImmediate(resolve));
    }
  };

  it('answers 429 over the per-address cap and 503 over the total, with fixed JSON bodies', async () => {
    await client();
    await client();
    const perAddress = await client();
    expect(await perAddress.answer).toMatch(
      /^HTTP\/1.1 429 Too Many Requests\r\n[^]*Retry-After: 1\r\n[^]*\{"code":"TOO_MANY_CONNECTIONS","message":"too many pending connections from this address"\}$/,
    );
    await client('127.0.0.2');
    const total = await client('127.0.0.3');
    expect(await total.answer).toMatch(
      /^HTTP\/1.1 503 Service Unavailable\r\n[^]*\{"code":"TOO_MANY_CONNECTIONS","message":"too many pending connections"\}$/,
    );
    expect(refused).toEqual(['per_address', 'total']);
  });

  it('stops counting a connection once it is granted or closed', async () => {
    const first = await client();
    await client();
    await served(2);
    release(accepted[0]);
    // Released twice (granted, then closed) counts once.
    first.socket.destroy();
    await client();
    await served(3);
    const over = await client();
    expect(await over.answer).toContain('429');
    expect(refused).toEqual(['per_address']);
  });

  it('stops counting a plain request once it is answered', async () => {
    const plain = await client();
    plain.socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await new Promise((resolve) => plain.socket.once('data', resolve));
    await client();
    await client();
    await served(3);
    expect(refused).toEqual([]);
  });
});
