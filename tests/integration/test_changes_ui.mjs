// test_changes_ui.mjs - the web UI's Changes view in headless Chromium (playwright-core): the
// files a session changed with their diffs (GET /v1/sessions/{id}/diff), added/removed colours,
// collapse, large files folded, the PR badge (rendered defensively; "Ready for review" and
// "Create PR" call POST …/pull-request) and the snapshot list whose "Roll back to here" rolls
// the workspace back.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { chromium } from 'playwright-core';
import { Tap, Server, api, makeToken, sleep } from './wslib.mjs';

const t = new Tap('test_changes_ui');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
if (!fs.existsSync(CHROMIUM)) {
  t.ok(`chromium installed at ${CHROMIUM} (make test-deps)`, false);
  t.done();
}
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sessiond-changes-'));
const git = (cwd, ...a) => execFileSync('git', ['-c', 'user.name=Seed', '-c', 'user.email=s@e', '-c', 'init.defaultBranch=main', ...a], { cwd, stdio: 'pipe' });
fs.mkdirSync(path.join(tmp, 'seed'));
git(tmp, 'init', '-q', '--bare', 'r.git');
fs.writeFileSync(path.join(tmp, 'seed', 'a.txt'), 'one\ntwo\nthree\n');
git(path.join(tmp, 'seed'), 'init', '-q');
git(path.join(tmp, 'seed'), 'add', '-A');
git(path.join(tmp, 'seed'), 'commit', '-qm', 'init');
git(path.join(tmp, 'seed'), 'push', '-q', path.join(tmp, 'r.git'), 'main');

const srv = await new Server(['--repos-tick-ms', '200']).start();
const alice = await makeToken(srv, 'alice', 'user', 'Alice');
let r = await api(srv, 'POST', '/v1/repos', { name: 'r', url: path.join(tmp, 'r.git'), pool_size: 0, image_interval_min: 0 });
t.ok('repository added', r.status === 201, r.text);
r = await api(srv, 'POST', '/v1/sessions', { title: 'changes', repo: 'r' }, alice);
const sid = r.body && r.body.id;

async function until(fn, ms = 30000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => null);
    if (v) return v;
    if (Date.now() > end) return null;
    await sleep(100);
  }
}
const countEv = async (type) => {
  const e = await api(srv, 'GET', `/v1/sessions/${sid}/events?limit=1000`, undefined, alice);
  return e.body.events.filter((x) => x.type === type).length;
};
await until(async () => (await countEv('sandbox.ready')) >= 1);
// turn 1: an edit, a new file, a long file (folded) and a 2 MB one (not read, folded)
r = await api(srv, 'POST', `/v1/sessions/${sid}/messages`, { content: 'sed -i s/two/TWO/ a.txt && echo new > new.txt && seq 1 1000 > long.txt && head -c 2000000 /dev/zero | tr "\\0" x > huge.txt' }, alice);
t.ok('turn 1 queued', r.status === 202, r.text);
t.ok('turn 1 snapshot', !!(await until(async () => (await countEv('session.snapshot')) >= 1)));
r = await api(srv, 'POST', `/v1/sessions/${sid}/messages`, { content: 'echo later > later.txt && echo \'{"type":"file_changed","path":"later.txt","action":"created"}\'' }, alice);
t.ok('turn 2 snapshot', !!(await until(async () => (await countEv('session.snapshot')) >= 2)));

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const problems = [];
const ctx = await browser.newContext({ viewport: { width: 1100, height: 900 } });
await ctx.addInitScript((tok) => localStorage.setItem('sessiond.token', tok), alice);
const page = await ctx.newPage();
page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
page.on('console', (m) => { if (/Content Security Policy/.test(m.text())) problems.push(`CSP: ${m.text()}`); });
page.on('dialog', (d) => d.accept());
// the session object may carry `pr` (a draft here): served through the real GET, with pr added
let prState = null;
const prCalls = [];
await page.route(`**/v1/sessions/${sid}`, async (route) => {
  const res = await route.fetch();
  const body = await res.json();
  if (prState) body.pr = { url: 'https://github.example/o/r/pull/7', number: 7, state: prState, ci: 'failure' };
  await route.fulfill({ response: res, json: body });
});
await page.route(`**/v1/sessions/${sid}/pull-request`, async (route) => {
  prCalls.push(route.request().postDataJSON());
  await route.fulfill({ status: 201, json: { url: 'https://github.example/o/r/pull/7', number: 7 } });
});

await page.goto(`${srv.base}/#/s/${sid}`);
await page.waitForSelector('.changes-btn', { timeout: 15000 });
// the timeline: agent.file_changed carries the file's diff, rendered like the Changes view's
const fcDiff = await until(async () => page.$eval('.ev.file', (li) => ({ label: li.querySelector('.label')?.textContent, add: li.querySelector('.diff .add')?.textContent })), 15000);
t.ok('the file_changed event shows its diff in the timeline', fcDiff && /later\.txt/.test(fcDiff.label) && /^\+later/.test(fcDiff.add || ''), fcDiff);
await page.click('.changes-btn');
const listed = await until(async () => {
  const paths = await page.$$eval('.file-diff', (ds) => ds.map((d) => d.dataset.path));
  return paths.length >= 5 ? paths : null;
}, 15000);
t.ok('the changed files are listed', listed && ['a.txt', 'huge.txt', 'later.txt', 'long.txt', 'new.txt'].every((p) => listed.includes(p)), listed);
const colours = await page.$eval('.file-diff[data-path="a.txt"]', (d) => {
  const bg = (sel) => { const e = d.querySelector(sel); return e ? getComputedStyle(e).backgroundColor : null; };
  return { add: bg('.diff .add'), del: bg('.diff .del'), addText: d.querySelector('.diff .add')?.textContent, open: d.open };
});
t.ok('the diff is rendered with added/removed colours', colours.add && colours.del && colours.add !== 'rgba(0, 0, 0, 0)' && colours.del !== 'rgba(0, 0, 0, 0)' && colours.add !== colours.del && /^\+TWO/.test(colours.addText), colours);
t.ok('a small file starts open', colours.open === true);
await page.click('.file-diff[data-path="a.txt"] > summary');
t.ok('clicking its header collapses it', (await page.$eval('.file-diff[data-path="a.txt"]', (d) => d.open)) === false);
const folded = await page.$$eval('.file-diff', (ds) => Object.fromEntries(ds.map((d) => [d.dataset.path, { open: d.open, tags: [...d.querySelectorAll('.tag')].map((x) => x.textContent) }])));
t.ok('the 2 MB file is folded and marked large', folded['huge.txt'] && !folded['huge.txt'].open && folded['huge.txt'].tags.includes('large file'), folded['huge.txt']);
t.ok('the 1000-line file starts folded', folded['long.txt'] && !folded['long.txt'].open, folded['long.txt']);
t.ok('no PR yet: "Create PR", no badge', (await page.$('.create-pr')) && !(await page.$('.pr-badge')));
await page.click('.create-pr');
await until(async () => prCalls.length >= 1, 5000);
t.ok('"Create PR" posts to …/pull-request', prCalls.length === 1 && Object.keys(prCalls[0] || {}).length === 0, prCalls);

prState = 'draft';
await page.click('.changes-head button.link'); // Refresh
const badge = await until(async () => page.$eval('.pr-badge', (b) => ({ state: b.dataset.state, text: b.textContent, href: b.querySelector('a')?.href })), 5000);
t.ok('a draft PR shows a badge with its link and CI state', badge && badge.state === 'draft' && /#7/.test(badge.text) && /CI/.test(badge.text) && badge.href === 'https://github.example/o/r/pull/7', badge);
await page.click('button.ready');
await until(async () => prCalls.length >= 2, 5000);
t.ok('"Ready for review" posts {"draft": false}', prCalls[1] && prCalls[1].draft === false, prCalls);
const defensive = await page.evaluate(async () => {
  const m = await import('/ui/changes.js');
  const bad = m.prBadge({ url: 'javascript:alert(1)', state: 'weird', ci: 'bogus' });
  return { none: m.prBadge(null) === null && m.prBadge(undefined) === null && m.prBadge('x') === null, text: bad.textContent, link: bad.querySelector('a')?.getAttribute('href') ?? null, merged: m.prBadge({ state: 'merged', ci: 'success' }).dataset.state };
});
t.ok('the badge is defensive: absent pr -> none; bad state/url/ci are neutralised', defensive.none && defensive.link === null && !/bogus|weird/.test(defensive.text) && defensive.merged === 'merged', defensive);

const snaps = await page.$$eval('.snaps li[data-snapshot]', (ls) => ls.map((l) => l.dataset.snapshot));
t.ok('the snapshots are listed, newest first', snaps.length === 2 && snaps[0] === 'snap-000002' && snaps[1] === 'snap-000001', snaps);
await page.click('.snaps li[data-snapshot="snap-000001"] button.rollback');
const rolled = await until(async () => (await countEv('session.rollback')) >= 1, 15000);
t.ok('"Roll back to here" rolls the workspace back', !!rolled);
const after = await until(async () => {
  const paths = await page.$$eval('.file-diff', (ds) => ds.map((d) => d.dataset.path));
  return paths.length && !paths.includes('later.txt') ? paths : null;
}, 15000);
t.ok('after the rollback the list no longer has the turn-2 file', after && after.includes('a.txt'), after);
await page.screenshot({ path: path.join(tmp, 'changes.png'), fullPage: true });
t.ok('no page errors or CSP violations', problems.length === 0, problems);

await browser.close();
await srv.stop();
fs.rmSync(tmp, { recursive: true, force: true });
t.done();
