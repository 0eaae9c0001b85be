// An HTTP CONNECT proxy in front of one console, to run inside a network namespace
// (`NetworkLab.start(ns, node, [this file, HOST, PORT, PATH, CONSOLE_HOST, CONSOLE_PORT])`), as Nova's
// internal_access_path expects one: `CONNECT PATH HTTP/1.1` is answered 200 and then carries the
// console's bytes; any other request line gets 403. The 200 answer and the console's first bytes (a
// VNC banner) go out in ONE write, the case that lost bytes in Nova (bug 1695844). Prints `listening`
// once it accepts, and each request line it got.
'use strict';
const net = require('node:net');

const [host, portText, path, consoleHost, consolePortText] = process.argv.slice(2);

const server = net.createServer((client) => {
  client.setNoDelay(true);
  client.on('error', () => client.destroy());
  let head = Buffer.alloc(0);
  const onRequest = (chunk) => {
    head = Buffer.concat([head, chunk]);
    const end = head.indexOf('\r\n\r\n');
    if (end === -1) {
      return;
    }
    client.off('data', onRequest);
    client.pause();
    const requestLine = head.subarray(0, head.indexOf('\r\n')).toString('latin1');
    process.stdout.write(`request ${requestLine}\n`);
    if (requestLine !== `CONNECT ${path} HTTP/1.1`) {
      client.end('HTTP/1.1 403 Forbidden\r\n\r\n');
      return;
    }
    const upstream = net.connect({ host: consoleHost, port: Number(consolePortText), noDelay: true });
    upstream.on('error', () => client.destroy());
    upstream.once('data', (first) => {
      upstream.pause();
      client.write(Buffer.concat([Buffer.from('HTTP/1.1 200 Connection established\r\n\r\n', 'latin1'), first]));
      client.pipe(upstream).pipe(client);
      client.resume();
      upstream.resume();
    });
  };
  client.on('data', onRequest);
});
server.listen(Number(portText), host, () => process.stdout.write('listening\n'));
process.on('SIGTERM', () => process.exit(0));
