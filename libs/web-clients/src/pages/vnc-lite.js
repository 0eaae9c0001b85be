// keyhole's noVNC page, served as `/vnc_lite.html` (and `/`, `/vnc.html`, `/vnc_auto.html`): the
// `@novnc/novnc` package ships only the RFB library, not noVNC's pages, so this is a small page in
// the manner of noVNC's `vnc_lite.html`, built on `core/rfb.js` of the package (served at `/core/`).
// This module is served as `/keyhole/vnc-lite.js`, beside vnc-lite.html and vnc-lite.css.
//
// Query parameters, read as noVNC reads them (percent-decoded, `+` is not a space):
//   path       websocket path, default `websockify`; may carry its own query (`websockify?token=T`)
//   token      appended to `path` as `?token=` when `path` has none (Nova's old `vnc_auto.html?token=`)
//   host/port  websocket host and port, default the page's
//   encrypt    `wss` instead of `ws` (true/1/yes); default: whether the page came over https
//   password   VNC password; when absent and the server asks, the page prompts
//   scale      scale the remote screen to the window; `resize=scale` is the same, `resize=remote`
//              asks the server to resize instead
//   view_only  send no keyboard or mouse input
import RFB from '../core/rfb.js';

const topBar = document.getElementById('top-bar');
const statusElement = document.getElementById('status');
const ctrlAltDelButton = document.getElementById('send-ctrl-alt-del');

// For people and automated browser tests: the current status line.
const state = { status: 'loading' };
window.keyholeVnc = state;

function setStatus(text, kind) {
  state.status = text;
  statusElement.textContent = text;
  topBar.className = kind || '';
}

// Like noVNC's own pages: the raw value, percent-decoded ('+' stays '+').
function readQueryVariable(name, defaultValue) {
  const match = new RegExp('[?&]' + name + '=([^&#]*)').exec(window.location.search);
  if (!match) {
    return defaultValue;
  }
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return defaultValue;
  }
}

function readBoolean(name, defaultValue) {
  const value = readQueryVariable(name, null);
  if (value === null) {
    return defaultValue;
  }
  return /^(1|true|yes|on)$/i.test(value);
}

function websocketUrl() {
  let host = readQueryVariable('host', window.location.hostname);
  if (host.includes(':') && !host.startsWith('[')) {
    host = '[' + host + ']';
  }
  const port = readQueryVariable('port', window.location.port);
  const encrypt = readBoolean('encrypt', window.location.protocol === 'https:');
  let path = readQueryVariable('path', 'websockify');
  const token = readQueryVariable('token', null);
  if (token !== null && !/[?&]token=/.test(path)) {
    path += (path.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
  }
  return (encrypt ? 'wss' : 'ws') + '://' + host + (port ? ':' + port : '') + '/' + path.replace(/^\/+/, '');
}

function connect() {
  setStatus('Connecting');
  let socket;
  try {
    // Our own socket, handed to RFB, so that the close code and reason can be shown.
    socket = new WebSocket(websocketUrl(), ['binary']);
  } catch (error) {
    setStatus('Cannot connect: ' + error.message, 'failed');
    return;
  }
  let closeEvent = null;
  let securityFailure = '';
  socket.addEventListener('close', (event) => {
    closeEvent = event;
  });

  const password = readQueryVariable('password', null);
  const rfb = new RFB(document.getElementById('screen'), socket, {
    credentials: password === null ? {} : { password: password },
  });
  rfb.viewOnly = readBoolean('view_only', false);
  const resize = readQueryVariable('resize', '');
  rfb.scaleViewport = readBoolean('scale', false) || resize === 'scale';
  rfb.resizeSession = resize === 'remote';

  let desktopName = '';
  rfb.addEventListener('desktopname', (event) => {
    desktopName = event.detail.name;
    document.title = desktopName;
  });
  rfb.addEventListener('connect', () => {
    const encrypted = socket.url.startsWith('wss:');
    setStatus('Connected ' + (encrypted ? '(encrypted)' : '(unencrypted)') + (desktopName ? ' to ' + desktopName : ''), 'connected');
    ctrlAltDelButton.disabled = false;
  });
  rfb.addEventListener('credentialsrequired', () => {
    const entered = window.prompt('Password required:');
    if (entered === null) {
      rfb.disconnect();
      return;
    }
    rfb.sendCredentials({ password: entered });
  });
  rfb.addEventListener('securityfailure', (event) => {
    securityFailure = event.detail.reason || 'authentication failed';
  });
  rfb.addEventListener('disconnect', (event) => {
    ctrlAltDelButton.disabled = true;
    let text = event.detail.clean ? 'Disconnected' : 'Something went wrong, connection is closed';
    if (securityFailure) {
      text += ': ' + securityFailure;
    }
    if (closeEvent) {
      text += ' (closed: ' + (closeEvent.code + ' ' + closeEvent.reason).trim() + ')';
    }
    setStatus(text, 'failed');
  });
  ctrlAltDelButton.addEventListener('click', () => {
    rfb.sendCtrlAltDel();
    rfb.focus();
  });
}

connect();
