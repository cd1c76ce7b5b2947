// test_webui.mjs - the web UI in a real browser: headless Chromium (Debian's) driven by
// playwright-core. Two browser contexts are two users on one session: a prompt typed in one
// appears in both, the agent's output streams into both, presence and typing show, and a
// server restart is survived with no duplicate or lost event. Screenshots go to the test's
// temp dir (printed at the end).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import net from 'node:net';
import { Tap, Server, api, makeToken, sleep } from './wslib.mjs';

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

const t = new Tap('test_webui');
const shots = fs.mkdtempSync(path.join(os.tmpdir(), 'sessiond-webui-'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
if (!fs.existsSync(CHROMIUM)) {
  t.ok(`chromium installed at ${CHROMIUM} (make test-deps)`, false);
  t.done();
}

// A known port (the restart below must come back on it); no public_url: the default set-up.
const port0 = await freePort();
const srv = await new Server(['--listen', `127.0.0.1:${port0}`]).start();
const alice = await makeToken(srv, 'alice', 'user', 'Alice');
const bob = await makeToken(srv, 'bob', 'user', 'Bob');

// ---- static serving: CSP, types, ETag ----------------------------------------------------------
{
  const r = await fetch(srv.base + '/');
  const csp = r.headers.get('content-security-policy') || '';
  t.ok('GET / serves the UI as HTML', r.status === 200 && /text\/html/.test(r.headers.get('content-type')));
  t.ok('strict CSP: no inline script, self only', /script-src 'self'(;|$)/.test(csp) && !/unsafe-inline|unsafe-eval/.test(csp) && /default-src 'none'/.test(csp) && /frame-ancestors/.test(csp), csp);
  const js = await fetch(srv.base + '/ui/app.js');
  t.ok('ES module served as text/javascript', js.status === 200 && /text\/javascript/.test(js.headers.get('content-type')));
  const etag = js.headers.get('etag');
  const again = await fetch(srv.base + '/ui/app.js', { headers: { 'If-None-Match': etag } });
  t.ok('ETag revalidation answers 304', etag && again.status === 304 && js.headers.get('cache-control') === 'no-cache', { etag, status: again.status });
  const miss = await fetch(srv.base + '/ui/../registry.db');
  const miss2 = await fetch(srv.base + '/ui/nope.js');
  t.ok('unknown and traversal paths: 404', miss.status === 404 && miss2.status === 404, [miss.status, miss2.status]);
  t.ok('nosniff on assets', js.headers.get('x-content-type-options') === 'nosniff');
}

const sess = await api(srv, 'POST', '/v1/sessions', { title: 'Fix the flaky login test', repo: 'acme/webapp' }, alice);
const sid = sess.body && sess.body.id;
t.ok('session created', sess.status === 201, sess);

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const problems = [];
async function userPage(name, token, viaForm) {
  const ctx = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  const page = await ctx.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' && !/WebSocket|ERR_CONNECTION_REFUSED|Failed to load resource/.test(m.text())) problems.push(`${name}: ${m.text()}`);
    if (/Content Security Policy/.test(m.text())) problems.push(`${name} CSP: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`${name} pageerror: ${e.message}`));
  if (viaForm) {
    await page.goto(srv.base + '/');
    await page.waitForSelector('#token', { timeout: 10000 });
    await page.fill('#token', token);
    await page.press('#token', 'Enter');
    await page.waitForSelector('table.sessions', { timeout: 10000 });
  } else {
    await ctx.addInitScript((tok) => localStorage.setItem('sessiond.token', tok), token);
    await page.goto(srv.base + '/');
  }
  return { ctx, page };
}

const A = await userPage('alice', alice, true);
{
  const row = await A.page.waitForSelector(`a[href="#/s/${sid}"]`, { timeout: 10000 }).catch(() => null);
  t.ok('signed in with the form; the session list shows the session', !!row);
  await A.page.screenshot({ path: path.join(shots, '1-list.png') });
  await A.page.click(`a[href="#/s/${sid}"]`);
}
const B = await userPage('bob', bob, false);
await B.page.goto(`${srv.base}/#/s/${sid}`);

const live = (p) => p.waitForSelector('.conn.open', { timeout: 15000 }).then(() => true).catch(() => false);
t.ok('both pages connect live over the WebSocket', (await live(A.page)) && (await live(B.page)));

// presence: two avatars on both pages
async function presenceCount(p) {
  return p.$eval('.presence', (el) => Number(el.dataset.count || 0)).catch(() => 0);
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
t.ok('presence: both see two people here', await until(async () => (await presenceCount(A.page)) === 2 && (await presenceCount(B.page)) === 2),
  [await presenceCount(A.page), await presenceCount(B.page)]);

// typing: bob types (without sending), alice sees it
await B.page.click('#prompt');
await B.page.keyboard.type('thinking about', { delay: 20 });
const typingSeen = await until(async () => /Bob is typing/.test(await A.page.textContent('.typing')));
t.ok('typing: alice sees "Bob is typing…"', !!typingSeen, await A.page.textContent('.typing'));
await A.page.screenshot({ path: path.join(shots, '2-typing.png') });
await B.page.fill('#prompt', '');

// a prompt typed by alice (Enter sends, Shift+Enter is a new line) appears in both
const script = 'echo hello-from-alice\nfor i in 1 2 3; do echo "line-$i <b>not bold</b>"; sleep 0.3; done';
await A.page.click('#prompt');
const [first, second] = script.split('\n');
await A.page.keyboard.type(first);
await A.page.keyboard.press('Shift+Enter');
await A.page.keyboard.type(second);
t.ok('Shift+Enter makes a new line (not sent)', (await A.page.inputValue('#prompt')) === script);
await A.page.keyboard.press('Enter');
const hasMsg = (p) => until(async () => {
  const msgs = await p.$$eval('.msg.user', (els) => els.map((e) => e.textContent));
  return msgs.some((m) => m.includes('hello-from-alice') && m.includes('Alice'));
});
t.ok('the prompt appears in alice\'s page with her name', !!(await hasMsg(A.page)));
t.ok('the prompt appears in bob\'s page with alice\'s name', !!(await hasMsg(B.page)));

// agent output streams into both; markup in output stays text
const outputIn = (p) => until(async () => {
  const txt = await p.$$eval('pre.output', (els) => els.map((e) => e.textContent).join('\n'));
  return /line-3/.test(txt) ? txt : null;
}, 30000);
const outA = await outputIn(A.page);
const outB = await outputIn(B.page);
t.ok('agent output streams into alice\'s page', !!outA, outA);
t.ok('agent output streams into bob\'s page', !!outB, outB);
t.ok('agent output is escaped (no <b> element made from it)', outA && /<b>not bold<\/b>/.test(outA) && (await A.page.$$('pre.output b')).length === 0);
const done = await until(async () => (await B.page.$('.line.completed, .line.failed')) !== null, 30000);
t.ok('prompt end shows in bob\'s page', !!done);
await A.page.screenshot({ path: path.join(shots, '3-alice-output.png') });
await B.page.setViewportSize({ width: 380, height: 760 }); // narrow, like the side panel
await B.page.screenshot({ path: path.join(shots, '4-bob-narrow.png') });

// ---- server restart: both reconnect and resume, no duplicate and no lost event -------------
const port = srv.port;
await srv.stop('SIGTERM');
const down = await until(async () => (await A.page.$('.conn.reconnecting, .conn.connecting')) !== null, 10000);
t.ok('pages notice the drop', !!down);
await srv.start();
t.ok('server back on the same port', srv.port === port, srv.port);
t.ok('both pages reconnect by themselves', (await live(A.page)) && (await live(B.page)));
// a comment from bob after the restart (run unticked: no agent)
await B.page.click('#run');
await B.page.fill('#prompt', 'after-restart comment from bob');
await B.page.press('#prompt', 'Enter');
const after = (p) => until(async () => (await p.$$eval('.msg.user', (els) => els.map((e) => e.textContent))).some((m) => m.includes('after-restart comment')));
t.ok('a message after the restart reaches both', !!(await after(A.page)) && !!(await after(B.page)));
t.ok('typing indicator gone once bob has sent', await until(async () => (await A.page.textContent('.typing')) === '', 3000));
await sleep(800);
const ev = await api(srv, 'GET', `/v1/sessions/${sid}/events?after=0&limit=1000`, undefined, alice);
const lastSeq = ev.body ? ev.body.last_seq : -1;
for (const [name, P] of [['alice', A], ['bob', B]]) {
  const seen = await P.page.evaluate(() => window.sessiond.seen.slice());
  const inc = seen.every((s, i) => i === 0 || s > seen[i - 1]);
  const full = seen.length === lastSeq && seen[0] === 1 && seen[seen.length - 1] === lastSeq;
  t.ok(`${name}: every event 1..${lastSeq} exactly once, in order, across the restart`, inc && full, { seen, lastSeq });
}
await A.page.screenshot({ path: path.join(shots, '5-after-restart.png') });

// ---- untrusted content in messages is text, never markup -------------------------------------
await api(srv, 'POST', `/v1/sessions/${sid}/messages`, { content: '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script>', run: false }, alice);
await until(async () => (await A.page.$$eval('.msg-body', (els) => els.some((e) => e.textContent.includes('onerror')))));
t.ok('message text with markup is rendered as text', (await A.page.evaluate(() => window.__pwned === undefined)) && (await A.page.$$('.msg-body img')).length === 0);
t.ok('no CSP violation or script error in either page', problems.length === 0, problems);

// ---- Stop cancels the running prompt (from bob's page) --------------------------------------
{
  await B.page.setViewportSize({ width: 1000, height: 760 });
  if (!(await B.page.isChecked('#run'))) await B.page.click('#run');
  await B.page.fill('#prompt', 'echo long-task-started; sleep 60');
  await B.page.press('#prompt', 'Enter');
  const enabled = await until(async () => !(await B.page.isDisabled('.session-head button.danger')), 20000);
  t.ok('Stop is enabled while a prompt runs', !!enabled);
  await until(async () => /long-task-started/.test(await B.page.textContent('.log')), 20000);
  await B.page.click('.session-head button.danger');
  const cancelled = await until(async () => (await A.page.$('.line.cancelled')) !== null && (await B.page.$('.line.cancelled')) !== null, 20000);
  t.ok('Stop cancels it: both pages show the prompt cancelled', !!cancelled);
  t.ok('Stop is disabled again', await until(async () => B.page.isDisabled('.session-head button.danger'), 5000));
}

// ---- every kind of agent event renders: the scripted agent + an image artifact ---------------
{
  const s2 = await api(srv, 'POST', '/v1/sessions', { title: 'Rendering check', agent: 'scripted' }, alice);
  const sid2 = s2.body && s2.body.id;
  await A.page.goto(`${srv.base}/#/s/${sid2}`);
  await live(A.page);
  await A.page.fill('#prompt', 'render everything');
  await A.page.press('#prompt', 'Enter');
  const rendered = await until(async () => {
    const txt = await A.page.textContent('.log');
    return /write_file/.test(txt) && /scripted\.txt/.test(txt) && /Done: render everything/.test(txt) && /Completed/.test(txt) ? txt : null;
  }, 30000);
  t.ok('scripted agent: status, tool call and result, file change, artifact, answer all render', !!rendered &&
    /reading the prompt/.test(rendered) && /Hello from the scripted agent/.test(rendered) && /created: scripted\.txt/.test(rendered), rendered);
  // a 1x1 PNG posted as an artifact shows inline (fetched with the bearer token)
  const png = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==', 'base64');
  const up = await fetch(`${srv.base}/v1/sessions/${sid2}/artifacts?type=screenshot&path=shot.png`, { method: 'POST', headers: { Authorization: `Bearer ${alice}`, 'Content-Type': 'image/png' }, body: png });
  t.ok('image artifact uploaded', up.status === 201 || up.status === 200, up.status);
  const img = await until(async () => A.page.$eval('.artifact img', (el) => el.complete && el.naturalWidth === 1 && el.src.startsWith('blob:')), 10000);
  t.ok('image artifacts show inline', !!img);
  await A.page.screenshot({ path: path.join(shots, '6-scripted-agent.png') });
}

await browser.close();
console.log(`# screenshots: ${shots}`);
await srv.stop();
t.done();
