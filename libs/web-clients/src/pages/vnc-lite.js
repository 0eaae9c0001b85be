// keyhole's noVNC page, served as `/vnc_lite.html` (and `/`, `/vnc.html`, `/vnc_auto.html`): the
// `@novnc/novnc` package ships only the RFB library, not noVNC's pages, so this is a small page in
// the manner of noVNC's `vnc_lite.html`, built on `core/rfb.js` of the package (served at `/core/`).
// This module is served as `/keyhole/vnc-lite.js`, beside vnc-lite.html and vnc-lite.css.
//
// Query parameters, read as noVNC reads them (percent-decoded, `+` is not a space):
//   path       websocket path, default `websockify`; may carry its own query (`websockify?token=T`)
//   token      appended to `path` as `?token=` when `path` has none (Nova's old `vnc_auto.html?token=`)
//   (not read: `host`, `port`, `encrypt`. noVNC's pages take them, so a crafted link could send
//   the token to another host; this page always connects to its own origin, `wss` when it came
//   over https, and its CSP `connect-src` allows nothing else.)
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

// The websocket URL from the page's own location only: same host and port, `wss` under https.
// `path` is made relative to the origin (leading slashes dropped), so it cannot name another host.
function websocketUrl() {
  let path = readQueryVariable('path', 'websockify');
  const token = readQueryVariable('token', null);
  if (token !== null && !/[?&]token=/.test(path)) {
    path += (path.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
  }
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  return scheme + '//' + window.location.host + '/' + path.replace(/^[/\\]+/, '');
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
