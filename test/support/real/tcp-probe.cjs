// A TCP probe run inside a network namespace (`ip netns exec NS node tcp-probe.cjs HOST PORT TIMEOUT_MS
// [READ_BYTES]`), since a socket belongs to the namespace of the process that opens it. Prints one
// JSON line: {"result":"open","bytes":BASE64} or {"result":"refused"|"unreachable"|"timeout"|"error",
// "code":...}. "refused" and "unreachable" come back at once; only "timeout" means nothing answered.
'use strict';
const net = require('node:net');

const [host, portText, timeoutText, readText] = process.argv.slice(2);
const port = Number(portText);
const timeoutMs = Number(timeoutText);
const readBytes = Number(readText ?? '0');

let done = false;
const finish = (outcome) => {
  if (done) {
    return;
  }
  done = true;
  process.stdout.write(`${JSON.stringify(outcome)}\n`);
  socket.destroy();
  process.exit(0);
};

const socket = net.createConnection({ host, port });
const timer = setTimeout(() => finish({ result: 'timeout' }), timeoutMs);
let received = Buffer.alloc(0);
socket.once('connect', () => {
  if (readBytes <= 0) {
    finish({ result: 'open', bytes: '' });
  }
});
socket.on('data', (chunk) => {
  received = Buffer.concat([received, chunk]);
  if (received.length >= readBytes) {
    finish({ result: 'open', bytes: received.subarray(0, readBytes).toString('base64') });
  }
});
socket.once('close', () => finish({ result: 'open', bytes: received.toString('base64'), closedEarly: true }));
socket.once('error', (error) => {
  const code = error.code;
  const result = code === 'ECONNREFUSED' ? 'refused' : code === 'EHOSTUNREACH' || code === 'ENETUNREACH' ? 'unreachable' : 'error';
  finish({ result, code });
});
