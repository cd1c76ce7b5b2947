// bench/agents_cli.mjs - the coding-agent CLIs through sessiond against the scripted model
// server (issue 7 figures).
//
//   node bench/agents_cli.mjs [--runs N] [--sandbox process|local] [--agents claude,codex,opencode]
//
// For each CLI, N prompts (text only, 5 deltas 150 ms apart) in fresh sessions, one at a time:
//   ttft_ms   prompt accepted (HTTP 202) -> first agent.output on a WebSocket client
//   delta_ms  the model server sends a text delta -> that text reaches the WebSocket client
//             (CLI + sessiond; Claude Code and OpenCode (serve driver) forward deltas as they
//             come, Codex prints whole messages, so its is measured from the last delta)
//   total_ms  prompt accepted -> prompt.completed
// Prints one JSON object per CLI with p50/p99 (ms). Needs `make agents` and build/sessiond.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { WebSocket } from '../tests/integration/wslib.mjs';
import { startServer, waitFor } from '../tests/integration/lib.mjs';
import { startModelServer } from '../tests/model-server.mjs';

const arg = (n, d) => {
  const i = process.argv.indexOf(n);
  return i >= 0 ? process.argv[i + 1] : d;
};
const RUNS = Number(arg('--runs', '5'));
const SANDBOX = arg('--sandbox', 'process');
const AGENTS = arg('--agents', 'claude,codex,opencode').split(',');

const sent = [];
const model = await startModelServer({ onDelta: (text, t) => sent.push({ text, t }) });
const tmp = fs.mkdtempSync('/tmp/sessiond-bench-agents-');
const cfg = path.join(tmp, 'config.json');
fs.writeFileSync(cfg, JSON.stringify({
  agents: {
    claude: { kind: 'claude-code', api_base: model.url, api_key_env: 'BENCH_KEY', max_retries: 0 },
    codex: { kind: 'codex', api_base: `${model.url}/v1`, api_key_env: 'BENCH_KEY', max_retries: 0 },
    opencode: { kind: 'opencode', model: 'scripted', api_base: `${model.url}/v1`, api_key_env: 'BENCH_KEY' },
  },
}));
const srv = await startServer({
  args: ['--config', cfg, '--sandbox', SANDBOX, '--log-level', 'warn'],
  env: { BENCH_KEY: `sk-${crypto.randomBytes(8).toString('hex')}`, SESSIOND_SANDBOX: SANDBOX },
});

const pct = (a, p) => {
  if (!a.length) return null;
  const s = [...a].sort((x, y) => x - y);
  return Math.round(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] * 10) / 10;
};

async function once(agent) {
  const sid = (await srv.createSession({ agent, title: 'bench' })).id;
  const got = [];
  const ws = new WebSocket(srv.wsUrl(sid, { token: srv.adminToken, after: 0 }));
  ws.on('message', (m) => {
    const f = JSON.parse(m.toString());
    const evs = f.type === 'event' ? [f.event] : f.type === 'events' ? f.events : [];
    for (const e of evs) got.push({ e, t: Date.now() });
  });
  await new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
  sent.length = 0;
  const t0 = Date.now();
  const r = await srv.api('POST', `/v1/sessions/${sid}/messages`, { body: { content: 'Say it slowly. [[text-only]] [[slow:150]]' } });
  const t1 = Date.now();
  if (r.status !== 202) throw new Error(`HTTP ${r.status}`);
  const end = await waitFor(() => got.find((g) => g.e.type === 'prompt.completed' || g.e.type === 'prompt.failed'),
    { ms: 180000, every: 10, what: 'the end of the prompt' });
  ws.close();
  if (end.e.type !== 'prompt.completed') throw new Error(`${agent}: ${end.e.data.reason}`);
  const outs = got.filter((g) => g.e.type === 'agent.output' && !g.e.data.stream);
  const deltas = [];
  for (const o of outs) {
    // the latest sent delta that this output contains (merged outputs carry several)
    const hits = sent.filter((s) => o.e.data.text.includes(s.text) && s.t <= o.t);
    if (hits.length) deltas.push(o.t - hits[hits.length - 1].t);
  }
  return { ttft: outs.length ? outs[0].t - t1 : null, accept: t1 - t0, total: end.t - t1, deltas };
}

for (const agent of AGENTS) {
  const ttft = [], total = [], delta = [], accept = [];
  for (let i = 0; i < RUNS; i++) {
    const r = await once(agent);
    if (r.ttft !== null) ttft.push(r.ttft);
    total.push(r.total);
    accept.push(r.accept);
    delta.push(...r.deltas);
  }
  console.log(JSON.stringify({
    agent, sandbox: SANDBOX, runs: RUNS,
    ttft_ms: { p50: pct(ttft, 50), p99: pct(ttft, 99) },
    delta_ms: { p50: pct(delta, 50), p99: pct(delta, 99), n: delta.length },
    total_ms: { p50: pct(total, 50), p99: pct(total, 99) },
    post_accept_ms: { p50: pct(accept, 50) },
  }));
}
await srv.stop();
await model.close();
fs.rmSync(tmp, { recursive: true, force: true });
