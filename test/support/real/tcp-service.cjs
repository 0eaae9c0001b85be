// A TCP console stand-in to run inside a network namespace (`NetworkLab.start(ns, node, [this file,
// HOST, PORT, MODE])`; for an echo server, tcp-echo.cjs): `silent` reads and never answers (a peer
// that accepted and hangs); `source` sends the pattern i % 251 for ever,
// honouring backpressure, and prints `written N` (its total) whenever that changed, every 200 ms, so a
// test can see it blocked. Prints `listening` once it accepts.
'use strict';
const net = require('node:net');

const [host, portText, mode] = process.argv.slice(2);
const chunk = Buffer.alloc(251 * 256);
for (let index = 0; index < chunk.length; index += 1) {
  chunk[index] = index % 251;
}

let written = 0;
let reported = -1;
setInterval(() => {
  if (written !== reported) {
    reported = written;
    process.stdout.write(`written ${written}\n`);
  }
}, 200);

const server = net.createServer((socket) => {
  socket.on('error', () => socket.destroy());
  if (mode === 'silent') {
    socket.resume();
    return;
  }
  let open = true;
  socket.once('close', () => (open = false));
  const pump = () => {
    while (open) {
      written += chunk.length;
      if (!socket.write(chunk)) {
        socket.once('drain', pump);
        return;
      }
    }
  };
  pump();
});
server.listen(Number(portText), host, () => process.stdout.write('listening\n'));
