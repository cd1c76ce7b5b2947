// sidepanel.js - the side panel: the sessiond web UI in a frame (embedded mode), with the
// user's own token handed to it by postMessage, and the "select area" button whose result
// is handed over the same way as DOM context for the next prompt.
const frame = document.getElementById('ui');
const statusEl = document.getElementById('status');
const setup = document.getElementById('setup');
let server = '';
let token = '';
let origin = '';

function post(msg) {
  if (origin && frame.contentWindow) frame.contentWindow.postMessage(msg, origin);
}

async function init() {
  const cfg = await chrome.storage.local.get(['server', 'token', 'session']);
  server = (cfg.server || '').replace(/\/+$/, '');
  token = cfg.token || '';
  if (!server || !token) {
    setup.hidden = false;
    frame.hidden = true;
    return;
  }
  origin = new URL(server).origin;
  setup.hidden = true;
  frame.hidden = false;
  frame.src = `${server}/?embed=1${cfg.session ? `#/s/${encodeURIComponent(cfg.session)}` : ''}`;
  statusEl.textContent = new URL(server).host;
  const { lastSelection } = await chrome.storage.session.get('lastSelection').catch(() => ({}));
  if (lastSelection) pendingContext = lastSelection;
}
let pendingContext = null;

window.addEventListener('message', (e) => {
  if (e.source !== frame.contentWindow || e.origin !== origin) return;
  if (e.data && e.data.type === 'sessiond.ready') {
    post({ type: 'sessiond.token', token });
    if (pendingContext) {
      post({ type: 'sessiond.context', context: pendingContext });
      pendingContext = null;
      chrome.storage.session.remove('lastSelection').catch(() => {});
    }
  }
});

chrome.runtime.onMessage.addListener((msg) => {
  if (msg && msg.type === 'sessiond.selection' && msg.context) {
    const n = (msg.context.elements || []).length;
    statusEl.textContent = `Selected ${n} element${n === 1 ? '' : 's'}`;
    post({ type: 'sessiond.context', context: msg.context });
    chrome.storage.session.remove('lastSelection').catch(() => {});
  }
});

document.getElementById('select').addEventListener('click', async () => {
  statusEl.textContent = 'Drag over the page…';
  await chrome.runtime.sendMessage({ type: 'sessiond.start-select' });
});

chrome.storage.onChanged.addListener((changes, area) => {
  if (area === 'local' && (changes.server || changes.token)) init();
});
init();
