// test_agents_cli.mjs - the real coding-agent CLIs (Claude Code, Codex, OpenCode, installed by
// `make agents`) run by sessiond against the scripted model server (tests/model-server.mjs).
//
// For each CLI, in parallel:
//   - a prompt whose shell tool creates shell.txt (and tries a host that is not on the egress
//     list) and whose edit tool writes edit.txt: both files exist, file_changed events for
//     both (computed by sessiond), tool_call/tool_result pairs with matching ids, the text
//     streamed to a WebSocket client as deltas, the assistant message stored, usage + turns in
//     prompt.completed, and the refused host reported as sandbox.egress_denied;
//   - a model error (HTTP 400) -> prompt.failed with the API's reason, within seconds;
//   - cancel while the shell tool runs -> prompt.cancelled.
// Finally the API key is searched for in every event, the server log and the session files.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import WebSocket from 'ws';
import { ROOT, startServer, Tap, waitFor, sleep } from './lib.mjs';
import { startModelServer, FINAL_TEXT } from '../model-server.mjs';

const t = new Tap('agents_cli');
const FINAL = FINAL_TEXT.join('');
const KEY = `sk-test-${crypto.randomBytes(12).toString('hex')}`;

const bin = path.join(ROOT, 'agents/bundled/node_modules/.bin');
const missing = ['claude', 'codex', 'opencode'].filter((b) => !fs.existsSync(path.join(bin, b)));
if (missing.length) {
  t.ok(false, `the CLIs are installed (run make agents; missing: ${missing.join(', ')})`);
  t.done();
}

const model = await startModelServer({});
const cfgDir = fs.mkdtempSync('/tmp/sessiond-agents-cli-');
const cfgPath = path.join(cfgDir, 'config.json');
fs.writeFileSync(cfgPath, JSON.stringify({
  agents: {
    claude: { kind: 'claude-code', model: 'claude-sonnet-4-5', api_base: model.url, api_key_env: 'TEST_AGENT_KEY', max_retries: 0 },
    codex: { kind: 'codex', model: 'gpt-5.5', api_base: `${model.url}/v1`, api_key_env: 'TEST_AGENT_KEY', max_retries: 0 },
    // a key inline in the config file (the others come from the server's environment)
    opencode: { kind: 'opencode', model: 'scripted', api_base: `${model.url}/v1`, api_key: KEY },
  },
}));
let srv = await startServer({ args: ['--config', cfgPath, '--cancel-grace-ms', '1000'], env: { TEST_AGENT_KEY: KEY } });

/** Events of a session after `after`. */
const events = (sid, after = 0) => srv.events(sid, { after });

/** Wait for an event of one of types (of prompt pid); returns it. */
async function waitEvent(sid, types, ms, pid) {
  return waitFor(async () => (await events(sid)).find((e) => types.includes(e.type) && e.data.prompt_id === pid),
    { ms, every: 100, what: `${types.join('|')} in ${sid}` });
}

/** A WebSocket client that collects every event it is sent. */
function watch(sid) {
  const got = [];
  const ws = new WebSocket(srv.wsUrl(sid, { token: srv.adminToken, after: 0 }));
  ws.on('message', (m) => {
    const f = JSON.parse(m.toString());
    if (f.type === 'event') got.push(f.event);
    if (f.type === 'events') got.push(...f.events);
  });
  const open = new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
  return { got, open, close: () => ws.close() };
}

async function newSession(agent) {
  return (await srv.createSession({ agent, title: `${agent} test` })).id;
}

async function prompt(sid, content) {
  const r = await srv.api('POST', `/v1/sessions/${sid}/messages`, { body: { content } });
  if (r.status !== 202) throw new Error(`post message: HTTP ${r.status} ${r.text}`);
  return r.json.prompt_id;
}

async function happyPath(agent, sid) {
  const w = watch(sid);
  await w.open;
  const t0 = Date.now();
  const pid = await prompt(sid, 'Create the two files. [[cmd:echo made-by-shell > shell.txt; curl -sS -m 5 https://example.com/ || true]]');
  const end = await waitEvent(sid, ['prompt.completed', 'prompt.failed'], 140000, pid);
  const ms = Date.now() - t0;
  const evs = (await events(sid)).filter((e) => e.type === 'sandbox.egress_denied' || e.data.prompt_id === pid);
  if (end.type !== 'prompt.completed') throw new Error(`prompt failed: ${end.data.reason}`);
  // Both files exist in the workspace.
  for (const [f, want] of [['shell.txt', 'made-by-shell'], ['edit.txt', 'written by the edit tool']]) {
    const r = await srv.api('GET', `/v1/sessions/${sid}/files`, { query: { path: f } });
    if (r.status !== 200 || !r.text.includes(want)) throw new Error(`${f}: HTTP ${r.status} ${r.text.slice(0, 100)}`);
  }
  // file_changed from sessiond's own workspace diff, for both.
  const changed = evs.filter((e) => e.type === 'agent.file_changed' && e.data.action === 'created').map((e) => e.data.path);
  for (const f of ['shell.txt', 'edit.txt']) {
    if (!changed.includes(f)) throw new Error(`no file_changed for ${f}: ${JSON.stringify(changed)}`);
  }
  // Tool calls and results pair up by id, each call before its result.
  const calls = evs.filter((e) => e.type === 'agent.tool_call');
  const results = evs.filter((e) => e.type === 'agent.tool_result');
  if (calls.length < 2 || results.length !== calls.length) throw new Error(`${calls.length} calls, ${results.length} results`);
  for (const r of results) {
    const c = calls.find((x) => x.data.id === r.data.id);
    if (!c || c.seq > r.seq) throw new Error(`result ${r.data.id} has no earlier call`);
  }
  // The egress refusal is reported.
  const denied = evs.filter((e) => e.type === 'sandbox.egress_denied');
  if (!denied.some((e) => e.data.host === 'example.com' && e.data.port === 443)) {
    throw new Error(`no sandbox.egress_denied for example.com:443: ${JSON.stringify(denied)}`);
  }
  // The text reached the WebSocket client, as deltas that add up to the answer.
  await waitFor(() => w.got.some((e) => e.type === 'prompt.completed' && e.data.prompt_id === pid), { ms: 5000, what: 'ws prompt.completed' });
  const text = w.got.filter((e) => e.type === 'agent.output' && !e.data.stream && e.data.prompt_id === pid).map((e) => e.data.text).join('');
  if (text !== FINAL) throw new Error(`streamed text ${JSON.stringify(text)}`);
  w.close();
  // The assistant message is stored.
  const msgs = await srv.json('GET', `/v1/sessions/${sid}/messages`);
  const list = msgs.messages || msgs;
  if (!list.some((m) => m.role === 'assistant' && m.content === FINAL)) throw new Error('no assistant message');
  // prompt.completed carries usage and turns.
  if (!(end.data.usage && end.data.usage.output_tokens > 0 && end.data.turns >= 2)) {
    throw new Error(`usage/turns: ${JSON.stringify(end.data)}`);
  }
  return { ms, sid };
}

async function modelError(agent, sid) {
  const t0 = Date.now();
  const pid = await prompt(sid, 'This request is refused by the model. [[fail:400]]');
  const end = await waitEvent(sid, ['prompt.completed', 'prompt.failed'], 140000, pid);
  const ms = Date.now() - t0;
  if (end.type !== 'prompt.failed') throw new Error(`expected prompt.failed, got ${end.type}`);
  if (!/400|scripted model error/.test(end.data.reason)) throw new Error(`reason: ${end.data.reason}`);
  return { ms, reason: end.data.reason };
}

async function cancelRun(agent, sid) {
  const pid = await prompt(sid, 'Take your time. [[cmd:touch started.txt; sleep 60]] [[shell-only]]');
  await waitFor(async () => (await srv.api('GET', `/v1/sessions/${sid}/files`, { query: { path: 'started.txt' } })).status === 200,
    { ms: 140000, every: 100, what: 'the shell tool to start' });
  const t0 = Date.now();
  const r = await srv.api('POST', `/v1/sessions/${sid}/cancel`, { body: {} });
  if (r.status >= 300) throw new Error(`cancel: HTTP ${r.status} ${r.text}`);
  const end = await waitEvent(sid, ['prompt.completed', 'prompt.failed', 'prompt.cancelled'], 20000, pid);
  if (end.type !== 'prompt.cancelled') throw new Error(`expected prompt.cancelled, got ${end.type}`);
  const ms = Date.now() - t0;
  const errs = (await events(sid)).filter((e) => e.type === 'agent.error' && e.data.prompt_id === pid);
  if (errs.length) throw new Error(`a cancelled run reported an agent error: ${JSON.stringify(errs[0].data)}`);
  return { ms };
}

// Each CLI runs its three scenarios one after the other in one session (its sandbox and the
// CLI's config dirs are reused, as for a real session: OpenCode's first start in a fresh home
// costs several seconds of CPU); the three CLIs run concurrently.
const figures = {};
await Promise.all(['claude', 'codex', 'opencode'].map(async (agent) => {
  const sid = await newSession(agent);
  await t.test(`${agent}: shell + edit tools, file_changed, tool pairs, streamed text, egress refusal`,
    async () => { figures[`${agent}_prompt_ms`] = (await happyPath(agent, sid)).ms; }, { timeoutMs: 150000 });
  await t.test(`${agent}: model HTTP 400 -> prompt.failed with the reason`,
    async () => { figures[`${agent}_fail_ms`] = (await modelError(agent, sid)).ms; }, { timeoutMs: 150000 });
  await t.test(`${agent}: cancel while a tool runs -> prompt.cancelled`,
    async () => { figures[`${agent}_cancel_ms`] = (await cancelRun(agent, sid)).ms; }, { timeoutMs: 150000 });
}));

await t.test('GET /v1/agents lists the three, installed, without the key', async () => {
  const r = await srv.api('GET', '/v1/agents');
  const names = (r.json.agents || []).filter((a) => a.installed && a.api_key_set).map((a) => a.name).sort();
  if (names.join() !== 'claude,codex,opencode') throw new Error(r.text);
  if (r.text.includes(KEY)) throw new Error('key in /v1/agents');
});

await t.test('the API key appears in no event, log line or session file', async () => {
  const list = await srv.json('GET', '/v1/sessions?limit=100');
  for (const s of list.sessions) {
    const evs = JSON.stringify(await events(s.id));
    if (evs.includes(KEY)) throw new Error(`key in the events of ${s.id}`);
    const ex = await srv.api('GET', `/v1/sessions/${s.id}/export`);
    if (ex.text.includes(KEY)) throw new Error(`key in the export of ${s.id}`);
  }
  await srv.stop();
  if (srv.logText().includes(KEY)) throw new Error('key in the server log');
  const walk = (d) => fs.readdirSync(d, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(d, e.name);
    return e.isDirectory() ? walk(p) : e.isFile() ? [p] : [];
  });
  const files = walk(srv.dataDir).filter((p) => /\.db(-wal)?$/.test(p) || p.endsWith('.log'));
  if (files.length < 2) throw new Error(`only ${files.length} data files`);
  for (const f of files) {
    if (fs.readFileSync(f).includes(KEY)) throw new Error(`key in ${f}`);
  }
});

// The same happy path in the isolated (bubblewrap) sandbox, where the network is gone and the
// CLIs reach the model only through the proxy's Unix socket and the loopback forwarder.
const local = await startServer({ args: ['--config', cfgPath, '--sandbox', 'local'], env: { TEST_AGENT_KEY: KEY, SESSIOND_SANDBOX: 'local' } })
  .catch((e) => e);
if (local instanceof Error) {
  t.ok(true, `local sandbox: skipped (bubblewrap cannot run here: ${local.message.split('\n')[0]})`);
} else {
  srv = local;
  await Promise.all(['claude', 'codex', 'opencode'].map((agent) => t.test(`local sandbox, ${agent}: files, file_changed, streamed text, egress through the Unix socket`, async () => {
    figures[`local_${agent}_prompt_ms`] = (await happyPath(agent, await newSession(agent))).ms;
  }, { timeoutMs: 150000 })));
  await t.test('local sandbox: the API key appears in no event or log line', async () => {
    const list = await srv.json('GET', '/v1/sessions?limit=100');
    for (const s of list.sessions) {
      if (JSON.stringify(await events(s.id)).includes(KEY)) throw new Error(`key in the events of ${s.id}`);
    }
    await srv.stop();
    if (srv.logText().includes(KEY)) throw new Error('key in the server log');
  });
}

console.error(`# figures: ${JSON.stringify(figures)}`);
await model.close();
fs.rmSync(cfgDir, { recursive: true, force: true });
t.done();
