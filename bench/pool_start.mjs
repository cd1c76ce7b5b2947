// bench/pool_start.mjs - one session start, timed from the client (used by bench/pool.sh):
// POST /v1/sessions {repo}, POST its first prompt (which starts the sandbox), then poll
// GET …/events?after=N every 2 ms until `sandbox.ready`. Prints one JSON line:
// {"sid","source","server_ms","e2e_ms"}. Usage: node pool_start.mjs BASE TOKEN REPO [SID]
// (with SID: a follow-up prompt on an existing session instead of a new one).
const [base, token, repo, existing] = process.argv.slice(2);
const H = {Authorization: `Bearer ${token}`, 'Content-Type': 'application/json'};
const post = async (p, b) => (await fetch(base + p, {method: 'POST', headers: H, body: JSON.stringify(b)})).json();
const t0 = performance.now();
let sid = existing, after = 0;
if (!sid) {
  sid = (await post('/v1/sessions', {repo})).id;
} else {
  const ev = await (await fetch(`${base}/v1/sessions/${sid}/events?limit=1000`, {headers: H})).json();
  after = ev.events.length ? ev.events[ev.events.length - 1].seq : 0;
}
await post(`/v1/sessions/${sid}/messages`, {content: 'true'});
for (;;) {
  const r = await (await fetch(`${base}/v1/sessions/${sid}/events?after=${after}&limit=1000`, {headers: H})).json();
  for (const e of r.events) {
    after = e.seq;
    if (e.type === 'sandbox.ready') {
      console.log(JSON.stringify({sid, source: e.data.source, server_ms: e.data.ms,
                                  e2e_ms: Math.round(performance.now() - t0)}));
      process.exit(0);
    }
  }
  await new Promise((res) => setTimeout(res, 2));
}
