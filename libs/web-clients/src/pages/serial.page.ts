/**
 * keyhole's serial console page, served as `/serial.html?token=TOKEN`: a full-window xterm.js
 * terminal on a binary websocket to `serial?token=TOKEN` beside the page (`/serial` when the page is
 * at the root). The console is QEMU's raw TCP byte stream, so bytes pass through untouched both
 * ways (UTF-8 and control sequences included). Scripts and styles are separate files (strict CSP).
 * Kept as strings so that the TypeScript build carries them into dist/ with the code.
 *
 * The page removes the token from the address bar once read, so that it is not kept in the
 * browser history; on close it shows the code and reason (1008 policy, e.g. revoked; 1011 upstream
 * failure) and does not reconnect. `window.keyholeSerial` = { status, received } (received: bytes
 * written to the terminal) is there for people and automated browser tests.
 */

export const SERIAL_HTML = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>Serial console</title>
<link rel="stylesheet" href="keyhole/xterm.css">
<link rel="stylesheet" href="keyhole/serial.css">
<script type="module" src="keyhole/serial.js"></script>
</head>
<body>
<div id="status" role="status" aria-live="polite">loading</div>
<div id="terminal"></div>
</body>
</html>
`;

export const SERIAL_CSS = `html, body {
  margin: 0;
  padding: 0;
  height: 100%;
  background: #000;
}
body {
  display: flex;
  flex-direction: column;
}
#status {
  padding: 2px 8px;
  background: #3a3a3a;
  color: #ddd;
  font: 12px/1.5 system-ui, sans-serif;
  white-space: nowrap;
  overflow: hidden;
  text-overflow: ellipsis;
}
#status.connected { background: #24522a; color: #fff; }
#status.closed { background: #7a2424; color: #fff; }
#terminal {
  flex: 1;
  min-height: 0;
  padding: 2px 0 0 4px;
}
`;

// Browser code (an ES module). No template literals inside: this is a String.raw template.
export const SERIAL_JS = String.raw`// keyhole serial console page: see serial.page.ts in the keyhole sources.
import { Terminal } from './xterm.mjs';
import { FitAddon } from './addon-fit.mjs';

const statusElement = document.getElementById('status');
const state = { status: 'loading', received: 0 };
window.keyholeSerial = state;

function setStatus(text, kind) {
  state.status = text;
  statusElement.textContent = text;
  statusElement.className = kind || '';
}

// Reads the token ('+' stays '+', as in noVNC's pages) and removes it from the address bar, so the
// browser history does not keep it.
function takeToken() {
  const parameters = window.location.search.replace(/^\?/, '').split('&').filter((part) => part !== '');
  let token = null;
  const kept = [];
  for (const part of parameters) {
    if (part === 'token' || part.startsWith('token=')) {
      if (token === null) {
        try {
          token = decodeURIComponent(part.slice('token='.length));
        } catch (error) {
          token = '';
        }
      }
    } else {
      kept.push(part);
    }
  }
  if (token !== null) {
    const query = kept.length > 0 ? '?' + kept.join('&') : '';
    window.history.replaceState(window.history.state, '', window.location.pathname + query + window.location.hash);
  }
  return token;
}

function websocketUrl(token) {
  const url = new URL('serial', window.location.href);
  url.protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  url.search = token ? '?token=' + encodeURIComponent(token) : '';
  url.hash = '';
  return url.href;
}

const token = takeToken();

const terminal = new Terminal({
  cursorBlink: true,
  scrollback: 10000,
  fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
  fontSize: 14,
});
const fitAddon = new FitAddon();
terminal.loadAddon(fitAddon);
const container = document.getElementById('terminal');
terminal.open(container);
fitAddon.fit();
new ResizeObserver(() => fitAddon.fit()).observe(container);
terminal.focus();

setStatus('connecting');
const socket = new WebSocket(websocketUrl(token), ['binary']);
socket.binaryType = 'arraybuffer';
const encoder = new TextEncoder();

function send(bytes) {
  if (socket.readyState === WebSocket.OPEN) socket.send(bytes);
}

socket.addEventListener('open', () => setStatus('connected', 'connected'));
socket.addEventListener('message', (event) => {
  // Binary frames; a text frame (not sent by keyhole) is shown as text.
  const data = typeof event.data === 'string' ? event.data : new Uint8Array(event.data);
  const size = typeof data === 'string' ? encoder.encode(data).length : data.length;
  terminal.write(data, () => {
    state.received += size;
  });
});
socket.addEventListener('close', (event) => {
  const reason = event.reason || (event.code === 1006 ? 'connection refused or lost' : '');
  setStatus(('closed: ' + event.code + ' ' + reason).trim(), 'closed');
  terminal.options.disableStdin = true;
  terminal.options.cursorBlink = false;
});

// Keystrokes as UTF-8 bytes; onBinary carries raw bytes (some mouse reports) one per character.
terminal.onData((data) => send(encoder.encode(data)));
terminal.onBinary((data) => send(Uint8Array.from(data, (character) => character.charCodeAt(0) & 0xff)));
`;
