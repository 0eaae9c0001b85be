// keyhole's serial console page, served as `/serial.html?token=TOKEN` (this module as
// `/keyhole/serial.js`): a full-window xterm.js terminal on a binary websocket to `serial?token=TOKEN`
// beside the page (`/serial` when the page is at the root). The console is QEMU's raw TCP byte
// stream, so bytes pass through untouched both ways (UTF-8 and control sequences included).
//
// The page removes the token from the address bar once read, so that it is not kept in the browser
// history; on close it shows the code and reason (1008 policy, e.g. revoked; 1011 upstream failure)
// and stays closed (no second attempt). `window.keyholeSerial` = { status, received } (received:
// bytes written to the terminal) is there for people and automated browser tests.
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
  const parameters = window.location.search
    .replace(/^\?/, '')
    .split('&')
    .filter((part) => part !== '');
  let token = null;
  const kept = [];
  for (const part of parameters) {
    if (part === 'token' || part.startsWith('token=')) {
      if (token === null) {
        try {
          token = decodeURIComponent(part.slice('token='.length));
        } catch {
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
  if (socket.readyState === WebSocket.OPEN) {
    socket.send(bytes);
  }
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
