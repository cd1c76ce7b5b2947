// bench/pool_start.mjs - one session start, timed from a real client (used by bench/pool.sh):
// POST /v1/sessions {repo} (which starts the workspace + sandbox in the background), then a
// WebSocket subscription to the session (?after=0: the file's events, then live ones) until
// `sandbox.ready`. Prints one JSON line {"sid","source","server_ms","e2e_ms","post_ms"}:
// e2e_ms = from just before the POST to the frame carrying sandbox.ready; post_ms = the POST's
// own round trip; server_ms = the ms field of the event (prepare + sandbox creation).
// Usage: node pool_start.mjs BASE TOKEN REPO [SID]
// (with SID: a follow-up prompt on an existing, ended session instead of a new one - that path
// starts at the prompt). The client is warmed up first (HTTP keep-alive connection, the ws
// module, a WebSocket handshake), so that its own first-use costs are not measured.
// Needs the `ws` package (tests/node_modules). POLL=1: poll GET …/events instead of the WS.
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(path.join(path.dirname(fileURLToPath(import.meta.url)), '../tests/'));
const WebSocket = require('ws');
const [base, token, repo, existing] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
const H = { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' };

function req(method, p, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const r = http.request(base + p, { method, agent, headers: data ? { ...H, 'Content-Length': Buffer.byteLength(data) } : H }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const t = Buffer.concat(chunks).toString();
        try { resolve(t ? JSON.parse(t) : {}); } catch (e) { reject(new Error(`${res.statusCode}: ${t}`)); }
      });
    });
    r.on('error', reject);
    if (data) r.write(data);
    r.end();
  });
}

function subscribe(sid, after, onEvent) {
  const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/v1/sessions/${sid}/ws?after=${after}`, { headers: { Authorization: H.Authorization } });
  ws.on('message', (buf) => {
    const f = JSON.parse(buf.toString());
    const evs = f.type === 'event' ? [f.event] : f.type === 'events' ? f.events : [];
    for (const e of evs) onEvent(e, ws);
  });
  ws.on('error', (e) => { console.error(String(e)); process.exit(1); });
  return ws;
}

async function pollUntil(sid, after, t0) {
  for (;;) {
    const r = await req('GET', `/v1/sessions/${sid}/events?after=${after}&limit=1000`);
    for (const e of r.events) {
      after = e.seq;
      if (e.type === 'sandbox.ready') return [e, performance.now() - t0];
    }
  }
}

// warm-up: the keep-alive connection, JSON, ws handshake code paths
await req('GET', '/healthz');
{
  const warm = existing || (await req('POST', '/v1/sessions', { title: 'bench warm-up' })).id;
  await new Promise((res) => { const w = subscribe(warm, 0, () => {}); w.on('open', () => { w.close(); res(); }); });
}

let sid = existing, after = 0, post_ms = 0;
let t0;
if (!sid) {
  t0 = performance.now();
  sid = (await req('POST', '/v1/sessions', { repo })).id;
  post_ms = performance.now() - t0;
} else {
  const ev = await req('GET', `/v1/sessions/${sid}/events?limit=1000`);
  after = ev.events.length ? ev.events[ev.events.length - 1].seq : 0;
  t0 = performance.now();
  await req('POST', `/v1/sessions/${sid}/messages`, { content: 'true' });
  post_ms = performance.now() - t0;
}
const done = (e, e2e) => {
  console.log(JSON.stringify({ sid, source: e.data.source, server_ms: e.data.ms, e2e_ms: Math.round(e2e * 10) / 10,
                               post_ms: Math.round(post_ms * 10) / 10 }));
  process.exit(0);
};
if (process.env.POLL) {
  const [e, ms] = await pollUntil(sid, after, t0);
  done(e, ms);
} else {
  subscribe(sid, after, (e) => { if (e.type === 'sandbox.ready') done(e, performance.now() - t0); });
}
setTimeout(() => { console.error('timeout waiting for sandbox.ready'); process.exit(1); }, 300000);
