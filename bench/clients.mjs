// bench/clients.mjs - figures for the clients issue (not a test; prints numbers):
//  1. Slack webhook: time to answer a signed event_callback (verify HMAC + dedup insert in the
//     registry + queue), p50/p99 over N sequential requests with distinct event_ids, plus
//     the same for retries (duplicates);
//  2. the embedded web UI: GET /ui/app.js (200) and revalidation (304) requests/s with C
//     keep-alive connections.
// Usage: node bench/clients.mjs [N=2000] [SECONDS=5] [C=8]   (SESSIOND_BIN = build/sessiond)
import crypto from 'node:crypto';
import http from 'node:http';
import { Server } from '../tests/integration/wslib.mjs';

const N = Number(process.argv[2] || 2000);
const SECS = Number(process.argv[3] || 5);
const C = Number(process.argv[4] || 8);
const SECRET = 'bench-secret';
process.env.SESSIOND_SLACK_SIGNING_SECRET = SECRET;
process.env.SESSIOND_SLACK_API_BASE = 'http://127.0.0.1:9/api'; // never reached: events ignored
const srv = await new Server(['--request-log', 'false', '--log-level', 'warn']).start();
const agent = new http.Agent({ keepAlive: true, maxSockets: C });

function request(method, path, headers, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: srv.port, method, path, headers, agent }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}

const pct = (a, p) => a[Math.min(a.length - 1, Math.floor((a.length * p) / 100))];
function slackReq(id) {
  const body = JSON.stringify({ type: 'event_callback', event_id: id, event: { type: 'reaction_added', user: 'U1' } });
  const ts = String(Math.floor(Date.now() / 1000));
  const sig = 'v0=' + crypto.createHmac('sha256', SECRET).update(`v0:${ts}:${body}`).digest('hex');
  return [{ 'Content-Type': 'application/json', 'X-Slack-Request-Timestamp': ts, 'X-Slack-Signature': sig, 'Content-Length': Buffer.byteLength(body) }, body];
}

for (const [label, idOf] of [['new event_ids', (i) => `EvB${i}`], ['retries (duplicates)', () => 'EvB0']]) {
  const lat = [];
  for (let i = 0; i < N; i++) {
    const [h, b] = slackReq(idOf(i));
    const t0 = process.hrtime.bigint();
    const st = await request('POST', '/v1/slack/events', h, b);
    lat.push(Number(process.hrtime.bigint() - t0) / 1e6);
    if (st !== 200) throw new Error(`status ${st}`);
  }
  lat.sort((a, b) => a - b);
  console.log(`slack ack, ${label}: n=${N} p50=${pct(lat, 50).toFixed(3)} ms p99=${pct(lat, 99).toFixed(3)} ms max=${lat[lat.length - 1].toFixed(3)} ms`);
}

async function rate(label, headers) {
  let n = 0;
  const end = Date.now() + SECS * 1000;
  await Promise.all(Array.from({ length: C }, async () => {
    while (Date.now() < end) {
      await request('GET', '/ui/app.js', headers);
      n++;
    }
  }));
  console.log(`static ${label}: ${(n / SECS).toFixed(0)} req/s (${C} keep-alive connections, ${SECS} s, node client on the same 2 cores)`);
}
const etag = await new Promise((resolve) => {
  http.get({ host: '127.0.0.1', port: srv.port, path: '/ui/app.js' }, (res) => {
    res.resume();
    resolve(res.headers.etag);
  });
});
await rate('GET /ui/app.js 200', {});
await rate('GET /ui/app.js 304 (If-None-Match)', { 'If-None-Match': etag });
await srv.stop();
process.exit(0);
