// test_egress_repo.mjs - a repository's egress list and default agent (issue 7), with the real
// Claude Code CLI (installed by `make agents`) against the scripted model server.
//
//   - POST /v1/repos with egress ["127.0.0.1:A"] and agent "claude": stored normalised and
//     returned by GET; the same fields load from the config's repos.file;
//   - bad input (malformed or too many egress entries, an unknown agent, wrong types) -> 400
//     with a clear message, and nothing changes (the repo is not created / keeps its fields);
//     an unknown agent in repos.file stops the server at start with the reason;
//   - a session of that repository naming no agent runs the repository's agent (claude), and
//     GET /v1/sessions/{id} shows it as the effective agent; a session naming one runs its own;
//   - inside the sandbox, a request through the proxy to 127.0.0.1:A (on the list) succeeds,
//     one to 127.0.0.1:B (a live server, not on the list) is refused and reported as
//     sandbox.egress_denied {host, port}; after a PATCH adding B, the next prompt reaches B.
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { ROOT, startServer, Tap, waitFor } from './lib.mjs';
import { startModelServer } from '../model-server.mjs';

const t = new Tap('egress_repo');
const KEY = 'sk-test-egress-repo-0123456789';

if (!fs.existsSync(path.join(ROOT, 'agents/bundled/node_modules/.bin/claude'))) {
  t.ok(false, 'the claude CLI is installed (run make agents)');
  t.done();
  process.exit();
}

/** A local HTTP server answering `${label}:${path}`; counts its requests. */
async function target(label) {
  const s = { hits: [] };
  s.srv = http.createServer((req, res) => {
    s.hits.push(req.url);
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`${label}-says-hello${req.url}\n`);
  });
  await new Promise((r) => s.srv.listen(0, '127.0.0.1', r));
  s.port = s.srv.address().port;
  return s;
}

const model = await startModelServer({});
const A = await target('allowed');
const B = await target('other');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sessiond-egress-repo-'));

// A seed git repository the sessions clone.
const seed = path.join(tmp, 'seed');
const git = (...a) => execFileSync('git', ['-c', 'user.name=Seed', '-c', 'user.email=seed@example.com',
  '-c', 'init.defaultBranch=main', ...a], { cwd: seed, stdio: 'pipe' });
fs.mkdirSync(seed);
git('init', '-q');
fs.writeFileSync(path.join(seed, 'README'), 'hello\n');
git('add', '-A');
git('commit', '-qm', 'init');

const agents = {
  claude: { kind: 'claude-code', model: 'claude-sonnet-4-5', api_base: model.url, api_key_env: 'TEST_AGENT_KEY', max_retries: 0 },
  codex: { kind: 'codex', model: 'gpt-5.5', api_base: `${model.url}/v1`, api_key_env: 'TEST_AGENT_KEY', max_retries: 0 },
};
const reposFile = path.join(tmp, 'repos.json');
fs.writeFileSync(reposFile, JSON.stringify([
  { name: 'fromfile', url: seed, pool_size: 0, image_interval_min: 0, egress: ['Example.COM.:443', '[::1]:8443'], agent: 'codex' },
]));
const cfgPath = path.join(tmp, 'config.json');
fs.writeFileSync(cfgPath, JSON.stringify({ agents, repos: { file: reposFile } }));
const env = { TEST_AGENT_KEY: KEY };
const srv = t.track(await startServer({ args: ['--config', cfgPath], env }));

const repoBody = { name: 'web', url: seed, pool_size: 0, image_interval_min: 0, egress: [`127.0.0.1:${A.port}`], agent: 'claude' };

await t.test('POST /v1/repos with egress + agent: stored and returned normalised', async () => {
  const r = await srv.api('POST', '/v1/repos', { body: { ...repoBody, egress: [`127.0.0.1:${A.port}`, `127.0.0.1:${A.port}`] } });
  if (r.status !== 201) throw new Error(`HTTP ${r.status} ${r.text}`);
  const g = await srv.json('GET', '/v1/repos/web');
  if (JSON.stringify(g.egress) !== JSON.stringify([`127.0.0.1:${A.port}`]) || g.agent !== 'claude') {
    throw new Error(`GET: ${JSON.stringify(g)}`);
  }
  const list = await srv.json('GET', '/v1/repos');
  if (!list.repos.some((x) => x.name === 'web' && x.agent === 'claude' && x.egress.length === 1)) throw new Error('list');
});

await t.test('repos.file: egress and agent loaded from the config (normalised)', async () => {
  const g = await srv.json('GET', '/v1/repos/fromfile');
  if (JSON.stringify(g.egress) !== '["example.com:443","[::1]:8443"]' || g.agent !== 'codex') {
    throw new Error(JSON.stringify(g));
  }
});

const bad = [
  ['egress entry without a port', { egress: ['example.com'] }, /egress\[0\].*port/],
  ['egress port out of range', { egress: ['ok.example:443', 'x.example:65536'] }, /egress\[1\].*1-65535/],
  ['egress host not a DNS name', { egress: ['bad_host!:443'] }, /egress\[0\].*host/],
  ['IPv6 without brackets', { egress: ['::1:443'] }, /brackets/],
  ['egress not an array', { egress: 'example.com:443' }, /egress must be an array/],
  ['egress entry not a string', { egress: [443] }, /egress\[0\]/],
  ['65 egress entries', { egress: Array.from({ length: 65 }, (_, i) => `h${i}.example:443`) }, /at most 64/],
  ['unknown agent', { agent: 'nosuch' }, /agent "nosuch" is not a configured agent/],
  ['agent not a string', { agent: 7 }, /agent must be/],
  ['valid change + unknown agent', { description: 'changed', egress: ['new.example:443'], agent: 'nosuch' }, /not a configured agent/],
];
await t.test('bad egress / agent -> 400 with the reason; nothing created or changed', async () => {
  const before = await srv.json('GET', '/v1/repos/web');
  for (const [what, fields, re] of bad) {
    const c = await srv.api('POST', '/v1/repos', { body: { ...repoBody, name: 'web2', ...fields } });
    if (c.status !== 400 || !re.test(c.json?.error?.message)) throw new Error(`POST ${what}: HTTP ${c.status} ${c.text}`);
    const p = await srv.api('PATCH', '/v1/repos/web', { body: fields });
    if (p.status !== 400 || !re.test(p.json?.error?.message)) throw new Error(`PATCH ${what}: HTTP ${p.status} ${p.text}`);
  }
  const g = await srv.api('GET', '/v1/repos/web2');
  if (g.status !== 404) throw new Error(`web2 was created: ${g.status}`);
  const after = await srv.json('GET', '/v1/repos/web');
  if (JSON.stringify(after) !== JSON.stringify(before)) throw new Error(`changed: ${JSON.stringify(after)}`);
});

/** Wait for the end of prompt pid; returns [end event, all events]. */
async function finish(sid, pid) {
  const end = await waitFor(async () => (await srv.events(sid)).find((e) =>
    ['prompt.completed', 'prompt.failed'].includes(e.type) && e.data.prompt_id === pid),
  { ms: 90000, every: 100, what: `the end of ${pid}` });
  return [end, await srv.events(sid)];
}

async function prompt(sid, content) {
  const id = (await srv.postMessage(sid, content, { run: true })).prompt_id;
  if (!id) throw new Error('no prompt queued');
  return id;
}

const fetchCmd = (port, file) => `curl -sS -m 5 -o ${file} -w '%{http_code}' http://127.0.0.1:${port}/from-sandbox || true`;
let sid;

await t.test('a session of the repo naming no agent: effective agent is the repo\'s (claude)', async () => {
  sid = (await srv.createSession({ title: 'egress', repo: 'web' })).id;
  const g = await srv.json('GET', `/v1/sessions/${sid}`);
  if (g.effective_agent !== 'claude' || g.agent_source !== 'repo') throw new Error(JSON.stringify(g));
});

await t.test('in the sandbox: the listed host:port is reached through the proxy, another port is refused (sandbox.egress_denied)', async () => {
  const pid = await prompt(sid, `Fetch. [[cmd:${fetchCmd(A.port, 'a.txt')}; ${fetchCmd(B.port, 'b.txt')}]] [[shell-only]]`);
  const [end, evs] = await finish(sid, pid);
  const started = evs.find((e) => e.type === 'prompt.started' && e.data.prompt_id === pid);
  if (started?.data.agent !== 'claude') throw new Error(`ran agent ${started?.data.agent}, want claude (the repo's)`);
  if (end.type !== 'prompt.completed') throw new Error(`prompt failed: ${end.data.reason}`);
  const a = await srv.api('GET', `/v1/sessions/${sid}/files`, { query: { path: 'a.txt' } });
  if (a.status !== 200 || !a.text.includes('allowed-says-hello/from-sandbox')) throw new Error(`a.txt: ${a.status} ${a.text.slice(0, 200)}`);
  if (!A.hits.includes('/from-sandbox')) throw new Error('server A saw no request');
  if (B.hits.length) throw new Error(`server B was reached: ${B.hits}`);
  const denied = evs.filter((e) => e.type === 'sandbox.egress_denied');
  if (!denied.some((e) => e.data.host === '127.0.0.1' && e.data.port === B.port)) {
    throw new Error(`no sandbox.egress_denied for 127.0.0.1:${B.port}: ${JSON.stringify(denied.map((e) => e.data))}`);
  }
  if (denied.some((e) => e.data.port === A.port || e.data.port === model.port)) throw new Error('an allowed pair was denied');
}, { timeoutMs: 100000 });

await t.test('PATCH egress adding the other port: the next prompt reaches it', async () => {
  const p = await srv.api('PATCH', '/v1/repos/web', { body: { egress: [`127.0.0.1:${A.port}`, `localhost:${B.port}`, `127.0.0.1:${B.port}`] } });
  if (p.status !== 200 || p.json.egress.length !== 3) throw new Error(`PATCH: ${p.status} ${p.text}`);
  const n0 = (await srv.events(sid)).filter((e) => e.type === 'sandbox.egress_denied').length;
  const pid = await prompt(sid, `Again. [[cmd:${fetchCmd(B.port, 'b2.txt')}]] [[shell-only]]`);
  const [end, evs] = await finish(sid, pid);
  if (end.type !== 'prompt.completed') throw new Error(`prompt failed: ${end.data.reason}`);
  const b = await srv.api('GET', `/v1/sessions/${sid}/files`, { query: { path: 'b2.txt' } });
  if (b.status !== 200 || !b.text.includes('other-says-hello/from-sandbox')) throw new Error(`b2.txt: ${b.status} ${b.text.slice(0, 200)}`);
  const n1 = evs.filter((e) => e.type === 'sandbox.egress_denied').length;
  if (n1 !== n0) throw new Error('a new refusal was recorded');
}, { timeoutMs: 100000 });

await t.test('the agent\'s proxy listener closes when the CLI exits (later commands get no route to the model endpoint)', async () => {
  const pid = await prompt(sid, 'Proxy. [[cmd:printf %s "$HTTPS_PROXY" > proxy.txt]] [[shell-only]]');
  const [end] = await finish(sid, pid);
  if (end.type !== 'prompt.completed') throw new Error(`prompt failed: ${end.data.reason}`);
  const f = await srv.api('GET', `/v1/sessions/${sid}/files`, { query: { path: 'proxy.txt' } });
  const m = /^http:\/\/127\.0\.0\.1:(\d+)$/.exec(f.text.trim());
  if (f.status !== 200 || !m) throw new Error(`proxy.txt: ${f.status} ${f.text.slice(0, 200)}`);
  const open = await new Promise((res) => {
    const c = net.connect(Number(m[1]), '127.0.0.1');
    c.on('connect', () => { c.destroy(); res(true); });
    c.on('error', () => res(false));
  });
  if (open) throw new Error(`the agent's listener on port ${m[1]} is still open after the prompt`);
}, { timeoutMs: 100000 });

await t.test('a session naming its own agent runs it, not the repo\'s', async () => {
  const s2 = (await srv.createSession({ title: 'own agent', repo: 'web', agent: 'codex' })).id;
  const g = await srv.json('GET', `/v1/sessions/${s2}`);
  if (g.effective_agent !== 'codex' || g.agent_source !== 'session') throw new Error(JSON.stringify(g));
  const pid = await prompt(s2, 'Just answer. [[text-only]]');
  const [end, evs] = await finish(s2, pid);
  const started = evs.find((e) => e.type === 'prompt.started' && e.data.prompt_id === pid);
  if (started?.data.agent !== 'codex') throw new Error(`ran ${started?.data.agent}`);
  if (end.type !== 'prompt.completed') throw new Error(`prompt failed: ${end.data.reason}`);
}, { timeoutMs: 100000 });

await t.test('PATCH agent null: sessions fall back to the server default', async () => {
  const p = await srv.api('PATCH', '/v1/repos/web', { body: { agent: null } });
  if (p.status !== 200 || p.json.agent !== null) throw new Error(`PATCH: ${p.status} ${p.text}`);
  const g = await srv.json('GET', `/v1/sessions/${sid}`);
  if (g.effective_agent !== 'shell' || g.agent_source !== 'default') throw new Error(JSON.stringify(g));
});

await srv.stop();

// The same in the isolated (bubblewrap) sandbox: no network of its own, the proxy reached
// through its Unix socket; a direct connection (bypassing the proxy) must fail too.
const local = await startServer({ args: ['--config', cfgPath, '--sandbox', 'local'], env: { ...env, SESSIOND_SANDBOX: 'local' } })
  .catch((e) => e);
if (local instanceof Error) {
  t.ok(true, `local sandbox: skipped (bubblewrap cannot run here: ${local.message.split('\n')[0]})`);
} else {
  t.track(local);
  await t.test('local sandbox: listed pair reached via the proxy, other port refused + reported, no direct route', async () => {
    const r = await local.api('POST', '/v1/repos', { body: { ...repoBody, name: 'webl' } });
    if (r.status !== 201) throw new Error(`POST: ${r.status} ${r.text}`);
    const ls = (await local.createSession({ title: 'local egress', repo: 'webl' })).id;
    A.hits.length = 0;
    B.hits.length = 0;
    const direct = `curl -sS -m 3 --noproxy '*' -o direct.txt http://127.0.0.1:${A.port}/direct; echo "direct=$?" > direct.rc`;
    const pid = (await local.postMessage(ls, `Fetch. [[cmd:${fetchCmd(A.port, 'a.txt')}; ${fetchCmd(B.port, 'b.txt')}; ${direct}]] [[shell-only]]`, { run: true })).prompt_id;
    const end = await waitFor(async () => (await local.events(ls)).find((e) =>
      ['prompt.completed', 'prompt.failed'].includes(e.type) && e.data.prompt_id === pid),
    { ms: 90000, every: 100, what: 'the end of the prompt' });
    const evs = await local.events(ls);
    if (end.type !== 'prompt.completed') throw new Error(`prompt failed: ${end.data.reason}`);
    const started = evs.find((e) => e.type === 'prompt.started' && e.data.prompt_id === pid);
    if (started?.data.agent !== 'claude') throw new Error(`ran ${started?.data.agent}`);
    const a = await local.api('GET', `/v1/sessions/${ls}/files`, { query: { path: 'a.txt' } });
    if (a.status !== 200 || !a.text.includes('allowed-says-hello/from-sandbox')) throw new Error(`a.txt: ${a.status} ${a.text.slice(0, 200)}`);
    if (!evs.some((e) => e.type === 'sandbox.egress_denied' && e.data.host === '127.0.0.1' && e.data.port === B.port)) {
      throw new Error('no sandbox.egress_denied for the other port');
    }
    const rc = await local.api('GET', `/v1/sessions/${ls}/files`, { query: { path: 'direct.rc' } });
    if (rc.status !== 200 || /direct=0\b/.test(rc.text)) throw new Error(`direct connection: ${rc.status} ${rc.text}`);
    if (B.hits.length || A.hits.includes('/direct')) throw new Error(`reached without the proxy: A ${A.hits} B ${B.hits}`);
  }, { timeoutMs: 100000 });
  await local.stop();
}

await t.test('repos.file with an unknown agent: the server refuses to start, saying why', async () => {
  fs.writeFileSync(reposFile, JSON.stringify([{ name: 'badfile', url: seed, agent: 'ghost' }]));
  const r = await startServer({ args: ['--config', cfgPath], env }).then((s) => s.stop().then(() => null), (e) => e);
  if (!r) throw new Error('the server started');
  if (!/not a configured agent/.test(r.message)) throw new Error(r.message.slice(0, 500));
});

await model.close();
A.srv.close();
B.srv.close();
if (!t.failed) fs.rmSync(tmp, { recursive: true, force: true });
t.done();
