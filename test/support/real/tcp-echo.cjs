// A TCP echo server to run inside a network namespace (`ip netns exec NS node tcp-echo.cjs HOST PORT`),
// where the test process cannot listen itself: a socket belongs to the namespace of the process that
// opens it. Echoes every byte with backpressure (pipe) and passes half-closes on; prints one JSON
// line {"listening":"HOST:PORT"} once it accepts.
'use strict';
const net = require('node:net');

const [host, portText] = process.argv.slice(2);
const server = net.createServer({ allowHalfOpen: true }, (socket) => {
  socket.on('error', () => socket.destroy());
  socket.pipe(socket);
});
server.listen(Number(portText), host, () => {
  process.stdout.write(`${JSON.stringify({ listening: `${host}:${portText}` })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
