// options.js - server URL + token, stored in chrome.storage.local; "Save and test" calls
// GET /v1/me with the token (a CORS request from this extension's origin).
const $ = (id) => document.getElementById(id);

async function load() {
  const cfg = await chrome.storage.local.get(['server', 'token', 'session']);
  $('server').value = cfg.server || '';
  $('token').value = cfg.token || '';
  $('session').value = cfg.session || '';
}

$('f').addEventListener('submit', async (e) => {
  e.preventDefault();
  const server = $('server').value.trim().replace(/\/+$/, '');
  const token = $('token').value.trim();
  const session = $('session').value.trim();
  await chrome.storage.local.set({ server, token, session });
  const out = $('result');
  out.textContent = 'Testing…';
  try {
    const res = await fetch(`${server}/v1/me`, { headers: { Authorization: `Bearer ${token}` } });
    const body = await res.json().catch(() => ({}));
    out.textContent = res.ok
      ? `Saved. Signed in as ${body.name || body.user_id}.`
      : `Saved, but the server said ${res.status}: ${(body.error && body.error.message) || ''}`;
  } catch (ex) {
    out.textContent = `Saved, but the server is unreachable: ${ex.message}`;
  }
});
load();
