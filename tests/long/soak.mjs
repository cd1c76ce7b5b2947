// tests/long/soak.mjs - the soak run behind `make soak` (tests/long/soak.sh sets it up).
//
// One real server (the local sandbox), SOAK_SESSIONS sessions (default 100) with SOAK_CLIENTS
// WebSocket clients (default 1,000) spread over them, steady traffic for SOAK_SECONDS
// (default 600): comments (run:false) at SOAK_MSG_RATE per second, a shell prompt every
// SOAK_PROMPT_EVERY_MS, and every 10 s a tenth of the clients closed and reconnected with
// ?after= (client churn is where per-connection leaks show). Every 10 s it samples the
// server's VmRSS (/proc/PID/status) and open fds (/proc/PID/fd). At the end it prints the
// samples, minute 2 against the end, and whether RSS stayed within 10 % and fds within +-5.
// The verdict is reported, not asserted: exit status 1 only if the run itself broke (the
// server died, clients could not connect, writes failed).
import fs from 'node:fs';
import { startServer, api, newSession, connect, sleep } from '../integration/wslib.mjs';

const SECONDS = parseInt(process.env.SOAK_SECONDS || '600', 10);
const NSESS = parseInt(process.env.SOAK_SESSIONS || '100', 10);
const NCLIENTS = parseInt(process.env.SOAK_CLIENTS || '1000', 10);
const MSG_RATE = parseInt(process.env.SOAK_MSG_RATE || '50', 10);
const PROMPT_EVERY_MS = parseInt(process.env.SOAK_PROMPT_EVERY_MS || '2000', 10);
const SAMPLE_MS = 10000;

function sample(pid) {
  const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const rss = parseInt(/VmRSS:\s+(\d+)/.exec(st)[1], 10);
  const fds = fs.readdirSync(`/proc/${pid}/fd`).length;
  const threads = parseInt(/Threads:\s+(\d+)/.exec(st)[1], 10);
  return { rss, fds, threads };
}

// The SQLite page cache of the open session files (a server gauge), in kB: the share of the
// RSS that is cached file pages, bounded per file by its cache_size.
async function cacheKiB(srv) {
  const text = await fetch(srv.base + '/metrics', { headers: { Authorization: `Bearer ${srv.admin}` } }).then((r) => r.text()).catch(() => '');
  const m = /^sessiond_sqlite_page_cache_bytes (\S+)$/m.exec(text);
  return m ? Math.round(parseFloat(m[1]) / 1024) : -1;
}

const srv = await startServer(['--sandbox', 'local', '--sandbox-idle-stop', '20', '--request-log', 'false',
  '--log-level', 'warn', ...(process.env.SOAK_SERVER_ARGS ? process.env.SOAK_SERVER_ARGS.split(' ') : [])]);
const pid = srv.proc.pid;
let broken = '';
srv.proc.once('exit', (code, sig) => { broken = `server exited (${code ?? sig})`; });

const sids = [];
for (let i = 0; i < NSESS; i++) sids.push(await newSession(srv, undefined, { title: `soak ${i}` }));

// clients[i] watches sids[i % NSESS]; a replaced client resumes after the last seq it saw.
const clients = new Array(NCLIENTS).fill(null);
let connectFailures = 0;
async function open(i, after) {
  const c = await connect(srv, sids[i % NSESS], after ? { after } : {});
  if (c.error) connectFailures++;
  // Keep only the newest frames: the soak is about the server's memory, not this process's.
  c.ws.on('message', () => { if (c.frames.length > 64) c.frames.splice(0, c.frames.length - 16); });
  clients[i] = c;
}
for (let i = 0; i < NCLIENTS; i += 50) {
  await Promise.all(Array.from({ length: Math.min(50, NCLIENTS - i) }, (_, k) => open(i + k, 0)));
}

const counts = { messages: 0, msgFail: 0, prompts: 0, promptFail: 0, reconnects: 0 };
const start = Date.now();
const end = start + SECONDS * 1000;
const samples = [{ t: 0, ...sample(pid) }];
let nextSample = start + SAMPLE_MS;
let nextPrompt = start;
let nextChurn = start + SAMPLE_MS;
let m = 0;
let p = 0;
let churnAt = 0;
let inflight = 0;

const tick = 1000 / Math.max(1, MSG_RATE);
while (Date.now() < end && !broken) {
  const now = Date.now();
  const sid = sids[m++ % NSESS];
  if (inflight < 200) { // open loop, but bounded: a stalled server must not grow this process
    inflight++;
    api(srv, 'POST', `/v1/sessions/${sid}/messages`, { content: `soak ${m}`, run: false, client_request_id: `soak-${m}` })
      .then((r) => { if (r.status === 202) counts.messages++; else counts.msgFail++; })
      .catch(() => { counts.msgFail++; })
      .finally(() => { inflight--; });
  }
  if (now >= nextPrompt) {
    nextPrompt += PROMPT_EVERY_MS;
    const psid = sids[p++ % NSESS];
    api(srv, 'POST', `/v1/sessions/${psid}/messages`, { content: `for i in 1 2 3; do echo soak $i; done` })
      .then((r) => { if (r.status === 202) counts.prompts++; else counts.promptFail++; })
      .catch(() => { counts.promptFail++; });
  }
  if (now >= nextChurn) {
    nextChurn += SAMPLE_MS;
    const n = Math.floor(NCLIENTS / 10);
    const batch = [];
    for (let k = 0; k < n; k++) {
      const i = (churnAt + k) % NCLIENTS;
      const old = clients[i];
      const after = old.lastSeq();
      batch.push(old.close().then(() => open(i, after)).then(() => { counts.reconnects++; }));
    }
    churnAt = (churnAt + n) % NCLIENTS;
    await Promise.all(batch);
  }
  if (now >= nextSample) {
    nextSample += SAMPLE_MS;
    try {
      samples.push({ t: Math.round((now - start) / 1000), ...sample(pid), cache: await cacheKiB(srv) });
    } catch (e) {
      broken = 'cannot sample the server: ' + e.message;
    }
    const s = samples[samples.length - 1];
    console.log(`# t=${s.t}s rss=${s.rss} kB sqlite_cache=${s.cache} kB fds=${s.fds} threads=${s.threads} msgs=${counts.messages} prompts=${counts.prompts} reconnects=${counts.reconnects}`);
  }
  await sleep(tick);
}
await sleep(2000);
const last = { t: Math.round((Date.now() - start) / 1000), ...sample(pid), cache: await cacheKiB(srv) };
samples.push(last);
const open_ = clients.filter((c) => c && c.ws.readyState === 1).length;

// Minute 2 (or half way for runs shorter than 4 minutes) against the end.
const baseT = SECONDS >= 240 ? 120 : Math.floor(SECONDS / 2);
const base = samples.reduce((a, s) => (Math.abs(s.t - baseT) < Math.abs(a.t - baseT) ? s : a), samples[0]);
const rssPct = ((last.rss - base.rss) / base.rss) * 100;
const fdDelta = last.fds - base.fds;
console.log(`soak: ${SECONDS}s, ${NSESS} sessions, ${NCLIENTS} ws clients (${open_} open at the end, ${counts.reconnects} reconnects, ${connectFailures} connect failures), ${counts.messages} messages (${counts.msgFail} failed), ${counts.prompts} prompts (${counts.promptFail} failed)`);
console.log(`soak: rss t=${base.t}s ${base.rss} kB -> end ${last.rss} kB (${rssPct >= 0 ? '+' : ''}${rssPct.toFixed(1)} %, ${Math.abs(rssPct) <= 10 ? 'within' : 'OUTSIDE'} 10 %); ` +
  `sqlite page cache ${base.cache} -> ${last.cache} kB; fds ${base.fds} -> ${last.fds} (${fdDelta >= 0 ? '+' : ''}${fdDelta}, ${Math.abs(fdDelta) <= 5 ? 'within' : 'OUTSIDE'} +-5); threads ${base.threads} -> ${last.threads}`);
fs.writeFileSync(process.env.SOAK_SAMPLES || '/dev/null', samples.map((s) => `${s.t} ${s.rss} ${s.fds} ${s.threads} ${s.cache ?? -1}`).join('\n') + '\n');
const metrics = await fetch(srv.base + '/metrics', { headers: { Authorization: `Bearer ${srv.admin}` } }).then((r) => r.text()).catch(() => '');
const metric = (name) => (new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(metrics) || [])[1];
console.log(`soak: server metrics: prompts completed ${metric('sessiond_prompts_completed_total') ?? '?'} failed ${metric('sessiond_prompts_failed_total') ?? '?'}, ws clients ${metric('sessiond_ws_clients') ?? '?'}, sessions open ${metric('sessiond_sessions_open') ?? '?'}`);
const brokenBeforeStop = broken;
for (const c of clients) if (c) c.ws.terminate();
await srv.stop();
broken = brokenBeforeStop;
// A sanitizer build reports leaks at exit (LeakSanitizer exits 23): SIGTERM, not SIGKILL.
console.log(`soak: server exit after SIGTERM: code ${srv.proc.exitCode} signal ${srv.proc.signalCode}; log ${srv.logFile}`);
if (broken || connectFailures > NCLIENTS / 100 || counts.messages === 0) {
  console.log(`soak: the run broke: ${broken || `${connectFailures} connect failures, ${counts.messages} messages`}`);
  srv.kill();
  process.exit(1);
}
if (!process.env.KEEP_TMP) srv.cleanup(); // unmounts the workspaces' disks first
process.exit(0);
