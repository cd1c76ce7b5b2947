// test_extension.mjs - the Chrome extension (web/extension/) and its backend:
//  1. the content script's extraction on a real page in headless Chromium (React-like fiber
//     keys included), and the drag-to-select overlay;
//  2. the backend: CORS for the configured extension origin, the prompt-with-context round
//     trip (dom_selection artifact, CONTEXT_FILE outside /workspace seen by the agent);
//  3. the unpacked extension loaded in headless Chromium: content script injected, selection
//     made in a page reaches the side panel, which hands it to the embedded UI; the prompt
//     sent from the side panel carries the context to the agent. Reported as it happens.
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { Tap, Server, api, makeToken, sleep } from './wslib.mjs';

const t = new Tap('test_extension');
const here = path.dirname(new URL(import.meta.url).pathname);
const EXT = path.resolve(here, '../../web/extension');
const EXT_ID = 'blpblpalackcehphpnkhgmanicagfhba'; // from the "key" in manifest.json
const EXT_ORIGIN = `chrome-extension://${EXT_ID}`;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const shots = fs.mkdtempSync(path.join(os.tmpdir(), 'sessiond-ext-'));
if (!fs.existsSync(CHROMIUM)) {
  t.ok(`chromium installed at ${CHROMIUM}`, false);
  t.done();
}

async function until(fn, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => null);
    if (v) return v;
    if (Date.now() > end) return null;
    await sleep(100);
  }
}
function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

// ---- a real page with React-like fiber keys, served over HTTP ---------------------------------
const LONG = 'Lorem ipsum dolor sit amet '.repeat(12);
const PAGE = `<!doctype html><html><head><title>Checkout</title><style>
body{margin:0;font:16px sans-serif} #app{position:absolute;left:40px;top:40px;width:400px}
.btn{display:inline-block;padding:8px 12px;margin:4px;background:#eee} #far{position:absolute;left:700px;top:500px}
.hidden{display:none}</style></head><body>
<div id="app"><form id="login" class="form login-form"><h2 class="title">Sign in</h2>
<label for="email">Email</label><input id="email" class="field">
<button id="go" class="btn primary" type="button">Continue</button>
<span id="old" class="legacy">Old widget</span><span class="btn ghost" id="memo">Memo</span>
<p id="long" class="copy">${LONG}</p><span class="hidden" id="invisible">invisible</span></form></div>
<div id="far" class="footer">Far away footer</div>
<script>
  // What React leaves on host nodes: a fiber whose .return chain reaches the component.
  function LoginForm() {} function PrimaryButton() {}
  const key = '__reactFiber$x7k2p';
  const formFiber = { type: 'form', return: { type: LoginForm, return: null } };
  document.getElementById('login')[key] = formFiber;
  document.getElementById('go')[key] = { type: 'button', return: { type: { render: PrimaryButton }, return: formFiber } };
  document.getElementById('email')[key] = { type: 'input', return: formFiber };
  // React 16 names the key __reactInternalInstance$
  document.getElementById('old')['__reactInternalInstance$abc'] = { type: 'span', return: { type: { displayName: 'LegacyWidget' } } };
  const Memo = function MemoChip() {};
  document.getElementById('memo')[key] = { type: 'span', return: { type: { $$typeof: 1, type: Memo }, return: null } };
</script></body></html>`;
const pageSrv = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
  res.end(PAGE);
});
await new Promise((r) => pageSrv.listen(0, '127.0.0.1', r));
const pageURL = `http://127.0.0.1:${pageSrv.address().port}/checkout`;

// ---- 1. the content script on a real page -----------------------------------------------------------
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
await page.goto(pageURL);
await page.addScriptTag({ path: path.join(EXT, 'fiber.js') });
await page.addScriptTag({ path: path.join(EXT, 'content.js') });
const ctx = await page.evaluate(() => window.__sessiondContent.extract({ x: 30, y: 30, width: 430, height: 420 }));
const byId = Object.fromEntries(ctx.elements.filter((e) => e.id).map((e) => [e.id, e]));
t.ok('extract: dom_selection with url, title and selection rect', ctx.type === 'dom_selection' && ctx.url === pageURL && ctx.title === 'Checkout' && ctx.selection.width === 430, ctx);
t.ok('extract: elements inside the rectangle are listed', byId.login && byId.go && byId.email && byId.long, Object.keys(byId));
t.ok('extract: elements outside or invisible are not', !byId.far && !byId.invisible && !ctx.elements.some((e) => e.tag === 'script'));
t.ok('extract: tag, id and classes', byId.go.tag === 'button' && JSON.stringify(byId.go.classes) === '["btn","primary"]' && byId.login.tag === 'form');
t.ok('extract: text capped at 100 characters', [...byId.long.text].length === 100 && byId.go.text === 'Continue', byId.long.text.length);
const r = byId.go.rect;
t.ok('extract: rect in page coordinates', r && r.x >= 40 && r.y >= 40 && r.width > 20 && r.height > 10, r);
t.ok('extract: reactComponent from the fiber (.return chain)', byId.login.reactComponent === 'LoginForm' && byId.email.reactComponent === 'LoginForm');
t.ok('extract: forwardRef render name', byId.go.reactComponent === 'PrimaryButton', byId.go);
t.ok('extract: React 16 __reactInternalInstance$ key', byId.old.reactComponent === 'LegacyWidget', byId.old);
t.ok('extract: null when no fiber', byId.long.reactComponent === null || byId.long.reactComponent === 'LoginForm', byId.long.reactComponent);
t.ok('extract: probe attributes cleaned up', (await page.$$('[data-sessiond-probe],[data-sessiond-react]')).length === 0);

// the drag-to-select overlay
{
  const sel = page.evaluate(() => new Promise((res) => {
    window.addEventListener('sessiond:selection', (e) => res(e.detail), { once: true });
    window.__sessiondContent.start();
  }));
  await page.waitForSelector('#__sessiond_select_overlay');
  await page.screenshot({ path: path.join(shots, '1-overlay.png') });
  await page.mouse.move(35, 35);
  await page.mouse.down();
  await page.mouse.move(470, 300, { steps: 5 });
  await page.mouse.up();
  const got = await sel;
  t.ok('drag selection: the overlay yields the elements under the rectangle', got && got.elements.some((e) => e.id === 'go') && !got.elements.some((e) => e.id === 'far'), got && got.elements.map((e) => e.id));
  t.ok('drag selection: overlay removed, not part of the result', (await page.$('#__sessiond_select_overlay')) === null && !got.elements.some((e) => /sessiond/.test(e.id || '')));
  const esc = page.evaluate(() => window.__sessiondContent.start());
  await page.waitForSelector('#__sessiond_select_overlay');
  await page.keyboard.press('Escape');
  t.ok('Escape cancels the selection', (await esc) === null && (await page.$('#__sessiond_select_overlay')) === null);
}
await browser.close();

// ---- 2. the backend: CORS + prompt with context --------------------------------------------
const port = await freePort();
const srv = await new Server(['--listen', `127.0.0.1:${port}`, '--public-url', `http://127.0.0.1:${port}`, '--origins', EXT_ORIGIN]).start();
const alice = await makeToken(srv, 'alice', 'user', 'Alice');
{
  const pre = await fetch(`${srv.base}/v1/sessions`, { method: 'OPTIONS', headers: { Origin: EXT_ORIGIN, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'authorization, content-type' } });
  t.ok('CORS preflight from the extension origin: 204 + allow headers + credentials',
    pre.status === 204 && pre.headers.get('access-control-allow-origin') === EXT_ORIGIN && pre.headers.get('access-control-allow-credentials') === 'true' &&
    /authorization/i.test(pre.headers.get('access-control-allow-headers') || '') && /POST/.test(pre.headers.get('access-control-allow-methods') || ''),
    Object.fromEntries(pre.headers));
  const bad = await fetch(`${srv.base}/v1/sessions`, { method: 'OPTIONS', headers: { Origin: 'chrome-extension://aaaabbbbccccddddeeeeffffgggghhhh', 'Access-Control-Request-Method': 'POST' } });
  t.ok('CORS preflight from another extension: 403, no allow-origin', bad.status === 403 && !bad.headers.get('access-control-allow-origin'), bad.status);
  const me = await fetch(`${srv.base}/v1/me`, { headers: { Origin: EXT_ORIGIN, Authorization: `Bearer ${alice}` } });
  t.ok('CORS on the actual request (the extension signs in with the user\'s own token)', me.status === 200 && me.headers.get('access-control-allow-origin') === EXT_ORIGIN && (await me.json()).user_id === 'token:alice');
  const csp = (await fetch(`${srv.base}/`)).headers.get('content-security-policy');
  t.ok('the UI may be framed by the extension (frame-ancestors)', new RegExp(`frame-ancestors 'self' ${EXT_ORIGIN}`).test(csp), csp);
}
const sid = (await api(srv, 'POST', '/v1/sessions', { title: 'extension round trip' }, alice)).body.id;
{
  const badctx = await api(srv, 'POST', `/v1/sessions/${sid}/messages`, { content: 'x', context: { type: 'dom_selection', elements: [{ tag: 'div', text: 'y'.repeat(101) }] } }, alice);
  t.ok('a DOM selection with over-long text is refused (400)', badctx.status === 400, badctx.body);
  const prompt = 'case "$CONTEXT_FILE" in /workspace*) echo INSIDE;; *) echo "context file outside workspace";; esac; cat "$CONTEXT_FILE"';
  const post = await api(srv, 'POST', `/v1/sessions/${sid}/messages`, { content: prompt, context: ctx }, alice);
  t.ok('prompt with DOM context accepted (202)', post.status === 202, post.body);
  const arts = await api(srv, 'GET', `/v1/sessions/${sid}/artifacts`, undefined, alice);
  const art = ((arts.body && arts.body.artifacts) || []).find((a) => a.type === 'dom_selection');
  t.ok('stored as a dom_selection artifact', !!art, arts.body);
  if (art) {
    const raw = await fetch(`${srv.base}/v1/sessions/${sid}/artifacts/${art.id}`, { headers: { Authorization: `Bearer ${alice}` } });
    const body = await raw.json().catch(() => null);
    t.ok('the artifact holds the selection as JSON', /application\/json/.test(raw.headers.get('content-type')) && body && body.elements.length === ctx.elements.length);
  }
  const out = await until(async () => {
    const ev = await api(srv, 'GET', `/v1/sessions/${sid}/events?after=0&limit=1000`, undefined, alice);
    const evs = (ev.body && ev.body.events) || [];
    const text = evs.filter((e) => e.type === 'agent.output').map((e) => e.data.text ?? e.data.data ?? '').join('');
    const end = evs.find((e) => /^prompt\.(completed|failed|cancelled)$/.test(e.type));
    return end ? { text, end, evs } : null;
  }, 30000);
  t.ok('the agent ran', out && out.end.type === 'prompt.completed', out && out.end);
  t.ok('the agent read the selection from CONTEXT_FILE', out && /PrimaryButton/.test(out.text) && /LoginForm/.test(out.text), out && out.text.slice(0, 500));
  t.ok('CONTEXT_FILE is outside /workspace', out && /context file outside workspace/.test(out.text) && !/INSIDE/.test(out.text));
  const created = out && out.evs.find((e) => e.type === 'artifact.created' && e.data.type === 'dom_selection');
  t.ok('an artifact.created event announces the selection', !!created && created.data.elements === ctx.elements.length, created);
}

// ---- 3. the unpacked extension in headless Chromium ----------------------------------------------
let loaded = false;
{
  const udd = fs.mkdtempSync(path.join(os.tmpdir(), 'sessiond-ext-profile-'));
  let ectx = null;
  try {
    ectx = await chromium.launchPersistentContext(udd, {
      executablePath: CHROMIUM, headless: true, viewport: { width: 1000, height: 700 },
      args: [...ARGS, `--disable-extensions-except=${EXT}`, `--load-extension=${EXT}`],
    });
    let [sw] = ectx.serviceWorkers();
    if (!sw) sw = await ectx.waitForEvent('serviceworker', { timeout: 10000 }).catch(() => null);
    loaded = !!sw;
    const id = sw ? new URL(sw.url()).host : null;
    console.log(`# unpacked extension in headless Chromium: ${loaded ? `loaded (id ${id})` : 'did NOT load (no service worker)'}`);
    t.ok('unpacked extension loads in headless Chromium (service worker running)', loaded);
    if (loaded) {
      t.ok('extension id is the one fixed by the manifest key', id === EXT_ID, id);
      // the options page: server URL + token, "Save and test" calls /v1/me from the extension
      const opts = await ectx.newPage();
      await opts.goto(`${EXT_ORIGIN}/options.html`);
      await opts.fill('#server', srv.base);
      await opts.fill('#token', alice);
      await opts.fill('#session', sid);
      await opts.click('button[type=submit]');
      const saved = await until(async () => /Signed in as Alice/.test(await opts.textContent('#result')));
      t.ok('options page saves the server URL and token and signs in (GET /v1/me)', !!saved, await opts.textContent('#result'));
      await opts.close();
      const stored = await sw.evaluate(() => chrome.storage.local.get(['server', 'token', 'session']));
      if (!stored.token) await sw.evaluate(([server, token, session]) => chrome.storage.local.set({ server, token, session }), [srv.base, alice, sid]);
      const tab = await ectx.newPage();
      await tab.goto(pageURL);
      await tab.bringToFront();
      // the side panel page, opened as a tab (headless has no side panel UI to click)
      const panel = await ectx.newPage();
      await panel.goto(`${EXT_ORIGIN}/sidepanel.html`);
      const frame = await until(async () => panel.frames().find((f) => f.url().startsWith(srv.base)));
      t.ok('side panel frames the session UI (embedded mode)', !!frame);
      const liveOk = frame && (await frame.waitForSelector('.conn.open', { timeout: 15000 }).then(() => true).catch(() => false));
      t.ok('embedded UI signed in with the token from the extension and live', !!liveOk);
      // start "select area" in the page through the extension's own messaging
      await sw.evaluate(async (url) => {
        const [tb] = await chrome.tabs.query({ url: url + '*' });
        await chrome.tabs.sendMessage(tb.id, { type: 'sessiond.select' });
      }, pageURL);
      const ov = await tab.waitForSelector('#__sessiond_select_overlay', { timeout: 5000 }).catch(() => null);
      t.ok('content script injected; select mode shows its overlay', !!ov);
      if (ov) {
        await tab.mouse.move(35, 35);
        await tab.mouse.down();
        await tab.mouse.move(460, 450, { steps: 5 });
        await tab.mouse.up();
      }
      const chip = frame && (await frame.waitForSelector('.context .chip', { timeout: 10000 }).catch(() => null));
      const chipText = chip ? await chip.textContent() : '';
      t.ok('the selection reaches the side panel UI as DOM context', /DOM selection: \d+ element/.test(chipText), chipText);
      await panel.screenshot({ path: path.join(shots, '2-sidepanel.png') });
      if (chip) {
        await frame.fill('#prompt', 'cat "$CONTEXT_FILE"');
        await frame.press('#prompt', 'Enter');
        const out = await until(async () => {
          const txt = await frame.$$eval('pre.output', (els) => els.map((e) => e.textContent).join('\n'));
          return /LoginForm/.test(txt) ? txt : null;
        }, 30000);
        t.ok('prompt from the side panel carries the context to the agent (isolated-world probe gave React names)', !!out && /PrimaryButton/.test(out), out && out.slice(0, 300));
        await panel.screenshot({ path: path.join(shots, '3-sidepanel-output.png') });
      }
    }
  } catch (e) {
    console.log(`# unpacked extension: ${e.message.split('\n')[0]}`);
    t.ok('unpacked extension loads in headless Chromium', false, e.message);
  } finally {
    if (ectx) await ectx.close().catch(() => {});
    fs.rmSync(udd, { recursive: true, force: true });
  }
}

console.log(`# screenshots: ${shots}`);
await srv.stop();
pageSrv.close();
t.done();
