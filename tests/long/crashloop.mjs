// tests/long/crashloop.mjs - SIGKILL the real server CRASH_ROUNDS times (default 50) in the
// middle of its work, on one data dir kept across rounds, and check after each kill:
//   - every acknowledged (2xx) message is in GET messages and at its seq in GET events, and
//     the events of every session are seq 1..N with no gap;
//   - PRAGMA integrity_check = ok on every session file, registry.db and spool.db (sqlite3 CLI,
//     while the server is down: session files are opened with exclusive locking);
//   - no orphaned sandbox: no process of the killed server's tree (bwrap, sandbox-init, the
//     agent) outlives it, and no cgroup of its sandboxes holds a process;
//   - the prompt that was running is marked failed at the restart and the queue behind it runs
//     (every acknowledged prompt reaches a terminal event).
// Load during a round: writers posting comments with a client_request_id, WebSocket clients
// streaming (each must see contiguous seqs), one shell prompt per session that prints for a
// few seconds plus one queued behind it, an exec and a snapshot. The kill comes at a random
// moment 0.3-2.5 s into the load. Prints one summary line; exits 1 if anything was lost or
// left behind. Run by tests/long/crashloop.sh (make crashloop) and, with 3 rounds, by
// tests/integration/test_crash_short.sh (CRASH_TAP=name prints ok/not ok lines).
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client, sleep } from '../integration/wslib.mjs';

const ROUNDS = parseInt(process.env.CRASH_ROUNDS || '50', 10);
const NSESS = parseInt(process.env.CRASH_SESSIONS || '3', 10);
const WRITERS = parseInt(process.env.CRASH_WRITERS || '4', 10);
const TAP = process.env.CRASH_TAP || '';
const here = path.dirname(new URL(import.meta.url).pathname);
const BIN = process.env.SESSIOND_BIN || path.resolve(here, '../../build/sessiond');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sessiond-crashloop-'));
const dataDir = path.join(tmp, 'data');
const logFile = path.join(tmp, 'server.log');
const admin = 'adm_' + Math.random().toString(16).slice(2) + Math.random().toString(16).slice(2);

const problems = [];
const problem = (what) => { problems.push(what); console.error(`# ${what}`); };
const stats = { acked: 0, verified: 0, lost: 0, gaps: 0, integrity: 0, filesChecked: 0, orphans: 0,
  cgroupLeft: 0, interrupted: 0, interruptedFailed: 0, promptsAcked: 0, promptsDone: 0,
  snapshots: 0, execs: 0, wsEvents: 0, wsGaps: 0, treeProcs: 0, sandboxProcs: 0 };

let proc = null;
let base = '';
let port = 0;

async function startServer() {
  const portFile = path.join(tmp, 'port');
  try { fs.unlinkSync(portFile); } catch {}
  const log = fs.openSync(logFile, 'a');
  proc = spawn(BIN, ['--listen', '127.0.0.1:0', '--port-file', portFile, '--data-dir', dataDir,
    '--sandbox', 'local', '--request-log', 'false', '--sandbox-idle-stop', '600'],
  { stdio: ['ignore', log, log], env: { ...process.env, SESSIOND_ADMIN_TOKEN: admin, SESSIOND_SANDBOX: 'local' } });
  fs.closeSync(log);
  for (let i = 0; i < 600; i++) {
    if (fs.existsSync(portFile) && fs.readFileSync(portFile, 'utf8').trim()) break;
    if (proc.exitCode !== null) throw new Error('server exited at start: ' + tail());
    await sleep(25);
  }
  port = parseInt(fs.readFileSync(portFile, 'utf8'), 10);
  base = `http://127.0.0.1:${port}`;
}

function tail(n = 20) {
  try { return fs.readFileSync(logFile, 'utf8').split('\n').slice(-n).join('\n'); } catch { return ''; }
}

async function api(method, p, body) {
  const headers = { Authorization: `Bearer ${admin}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(base + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, body: json };
}

async function all(sid, what) {
  const out = [];
  let after = 0;
  for (;;) {
    const r = await api('GET', `/v1/sessions/${sid}/${what}?after=${after}&limit=1000`);
    if (r.status !== 200) throw new Error(`GET ${what} of ${sid}: ${r.status} ${JSON.stringify(r.body)}`);
    out.push(...r.body[what]);
    if (!r.body.has_more) return out;
    after = r.body.next_after;
  }
}

// The killed server's process tree (pid -> starttime), read from /proc.
function tree(root) {
  const kids = new Map();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      const ppid = parseInt(f[1], 10);
      if (!kids.has(ppid)) kids.set(ppid, []);
      kids.get(ppid).push({ pid: parseInt(d, 10), start: f[19], comm: st.slice(st.indexOf('(') + 1, st.lastIndexOf(')')) });
    } catch {}
  }
  const out = [];
  const todo = [root];
  while (todo.length) {
    for (const k of kids.get(todo.pop()) || []) { out.push(k); todo.push(k.pid); }
  }
  return out;
}

function alive(p) {
  try {
    const st = fs.readFileSync(`/proc/${p.pid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    return f[0] !== 'Z' && f[19] === p.start ? st.slice(st.indexOf('(') + 1, st.lastIndexOf(')')) : null;
  } catch { return null; }
}

function cgroupDirs(sid) {
  const out = [];
  for (const ctrl of ['pids', 'memory', 'cpu', 'cpu,cpuacct', 'unified', '']) {
    const d = path.join('/sys/fs/cgroup', ctrl, 'sessiond', sid);
    if (fs.existsSync(d) && !out.includes(fs.realpathSync(d))) out.push(fs.realpathSync(d));
  }
  return out;
}

// ---- state kept across rounds ----
const sids = [];
const acked = []; // {sid, crid, mid, seq}
const prompts = []; // {sid, pid, round}
let doneUpTo = 0; // acked[] verified up to here

async function verify(round) {
  for (const sid of sids) {
    const ev = await all(sid, 'events');
    const seqs = ev.map((e) => e.seq);
    for (let i = 0; i < seqs.length; i++) {
      if (seqs[i] !== i + 1) { stats.gaps++; problem(`round ${round}: ${sid}: seq ${seqs[i]} at position ${i + 1}`); break; }
    }
    const bySeq = new Map(ev.map((e) => [e.seq, e]));
    const msgs = new Set((await all(sid, 'messages')).map((m) => m.id));
    for (const a of acked) {
      if (a.sid !== sid) continue;
      const e = bySeq.get(a.seq);
      if (!msgs.has(a.mid) || !e || e.data?.message_id !== a.mid) {
        stats.lost++;
        problem(`round ${round}: acknowledged message ${a.mid} (seq ${a.seq}, ${a.crid}) of ${sid} is missing`);
      } else if (a.checked === undefined) {
        a.checked = true;
        stats.verified++;
      }
    }
  }
}

// Every acknowledged prompt reaches a terminal event; those interrupted by a kill fail with
// the restart reason. Waits up to `secs` for queues to drain.
async function promptsSettle(round, secs) {
  const end = Date.now() + secs * 1000;
  for (;;) {
    let open = 0;
    const terminal = new Map();
    for (const sid of sids) {
      for (const e of await all(sid, 'events')) {
        if (/^prompt\.(completed|failed|cancelled)$/.test(e.type)) terminal.set(e.data.prompt_id, e);
      }
    }
    for (const p of prompts) {
      const t = terminal.get(p.pid);
      if (!t) { open++; continue; }
      if (p.done) continue;
      p.done = true;
      stats.promptsDone++;
      if (t.type === 'prompt.failed' && /restart/.test(t.data.reason || '')) stats.interruptedFailed++;
    }
    if (!open) return true;
    if (Date.now() > end) {
      problem(`round ${round}: ${open} acknowledged prompts did not finish within ${secs} s after the restart (queue not resumed?)`);
      return false;
    }
    await sleep(200);
  }
}

const promptScript = 'for i in $(seq 1 30); do echo "crashloop line $i"; sleep 0.1; done';

async function load(round, killAt) {
  let stop = false;
  const tasks = [];
  // Writers: comments with a client_request_id; only 2xx answers are recorded.
  for (let w = 0; w < WRITERS; w++) {
    tasks.push((async () => {
      for (let i = 0; !stop; i++) {
        const sid = sids[(w + i) % sids.length];
        const crid = `r${round}-w${w}-${i}`;
        try {
          const r = await api('POST', `/v1/sessions/${sid}/messages`, { content: `msg ${crid}`, run: false, client_request_id: crid });
          if (r.status === 202 || r.status === 201 || r.status === 200) {
            acked.push({ sid, crid, mid: r.body.message_id, seq: r.body.seq });
            stats.acked++;
          }
        } catch { await sleep(5); }
      }
    })());
  }
  // Prompts: one running and one queued per session (the shell agent runs the text).
  for (const sid of sids) {
    tasks.push((async () => {
      for (let k = 0; k < 2 && !stop; k++) {
        try {
          const r = await api('POST', `/v1/sessions/${sid}/messages`, { content: promptScript, client_request_id: `r${round}-p${k}-${sid}` });
          if (r.status === 202) {
            acked.push({ sid, crid: `r${round}-p${k}`, mid: r.body.message_id, seq: r.body.seq });
            stats.acked++;
            prompts.push({ sid, pid: r.body.prompt_id, round });
            stats.promptsAcked++;
          }
        } catch {}
      }
    })());
  }
  // An exec and a snapshot, a little into the round.
  tasks.push((async () => {
    await sleep(150);
    try {
      const r = await api('POST', `/v1/sessions/${sids[0]}/exec`, { script: 'echo exec; sleep 0.3; echo done' });
      if (r.status >= 200 && r.status < 300) stats.execs++;
    } catch {}
    try {
      const r = await api('POST', `/v1/sessions/${sids[sids.length - 1]}/snapshots`);
      if (r.status === 201) stats.snapshots++;
    } catch {}
  })());
  // WebSocket clients: two per session, from the start; each must see contiguous seqs.
  const clients = [];
  for (const sid of sids) {
    for (let k = 0; k < 2; k++) {
      const c = new Client(`ws://127.0.0.1:${port}/v1/sessions/${sid}/ws?after=0`, { headers: { Authorization: `Bearer ${admin}` } });
      clients.push(c);
    }
  }
  await sleep(killAt);
  const victims = tree(proc.pid);
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGKILL');
  await exited;
  stop = true;
  await Promise.race([Promise.all(tasks), sleep(5000)]);
  for (const c of clients) {
    const ev = c.events();
    stats.wsEvents += ev.length;
    for (let i = 1; i < ev.length; i++) {
      if (ev[i].seq !== ev[i - 1].seq + 1 && !c.frames.some((f) => f.type === 'gap')) {
        stats.wsGaps++;
        problem(`round ${round}: a WebSocket client saw seq ${ev[i - 1].seq} then ${ev[i].seq}`);
        break;
      }
    }
    try { c.ws.terminate(); } catch {}
  }
  return victims;
}

async function checkDown(round, victims) {
  // The kernel kills bwrap (--die-with-parent) and with it the sandbox's pid namespace.
  let left = [];
  stats.treeProcs += victims.length;
  stats.sandboxProcs += victims.filter((p) => /bwrap|sandbox-init/.test(p.comm)).length;
  for (let i = 0; i < 40; i++) {
    left = victims.filter((p) => alive(p));
    if (!left.length) break;
    await sleep(50);
  }
  for (const p of left) {
    stats.orphans++;
    problem(`round ${round}: pid ${p.pid} (${alive(p)}) of the killed server is still running`);
  }
  for (const sid of sids) {
    for (const d of cgroupDirs(sid)) {
      let procs = '';
      try { procs = fs.readFileSync(path.join(d, 'cgroup.procs'), 'utf8').trim(); } catch {}
      if (procs) {
        stats.orphans++;
        problem(`round ${round}: cgroup ${d} still holds processes ${procs.split('\n').join(',')}`);
      } else if (round === ROUNDS) {
        stats.cgroupLeft++; // empty: reused by the session's next sandbox
      }
    }
  }
  const files = [path.join(dataDir, 'registry.db'), path.join(dataDir, 'spool.db')];
  for (const f of fs.readdirSync(path.join(dataDir, 'sessions'))) {
    if (f.endsWith('.db')) files.push(path.join(dataDir, 'sessions', f));
  }
  for (const f of files) {
    if (!fs.existsSync(f)) continue;
    stats.filesChecked++;
    let out = '';
    try {
      out = execFileSync('sqlite3', [f, 'PRAGMA integrity_check'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    } catch (e) { out = String(e.stderr || e.message).trim(); }
    if (out !== 'ok') {
      stats.integrity++;
      problem(`round ${round}: integrity_check of ${f}: ${out.slice(0, 200)}`);
    }
  }
}

const t0 = Date.now();
let interruptedAtKill = 0;
try {
  await startServer();
  for (let i = 0; i < NSESS; i++) {
    const r = await api('POST', '/v1/sessions', { title: `crashloop ${i}` });
    if (r.status !== 201) throw new Error('create session: ' + JSON.stringify(r.body));
    sids.push(r.body.id);
  }
  for (let round = 1; round <= ROUNDS; round++) {
    const killAt = 300 + Math.floor(Math.random() * 2200);
    const before = prompts.length;
    const victims = await load(round, killAt);
    // Prompts of this round that had started but not finished (by their events, read after
    // the restart) are the interrupted ones.
    await checkDown(round, victims);
    await startServer();
    await verify(round);
    for (const sid of sids) {
      for (const e of await all(sid, 'events')) {
        if (e.type === 'prompt.failed' && /restart/.test(e.data.reason || '') &&
            prompts.slice(before).some((p) => p.pid === e.data.prompt_id)) interruptedAtKill++;
      }
    }
    await promptsSettle(round, 30);
    if (TAP) console.log(`# round ${round}: killed at ${killAt} ms; ${stats.acked} acknowledged so far, ${problems.length} problems`);
    if (problems.length > 20) break;
  }
  stats.interrupted = interruptedAtKill;
  proc.kill('SIGTERM');
  await new Promise((r) => proc.once('exit', r));
} catch (e) {
  problem('the run broke: ' + e.message + '\n' + tail());
  if (proc && proc.exitCode === null) proc.kill('SIGKILL');
}
const secs = ((Date.now() - t0) / 1000).toFixed(1);
console.log(`crashloop: ${ROUNDS} rounds in ${secs} s: ${stats.acked} messages acknowledged ` +
  `(${stats.promptsAcked} of them prompts), ${stats.verified} verified, ${stats.lost} lost, ` +
  `${stats.gaps} seq gaps, ${stats.filesChecked} integrity checks with ${stats.integrity} failures, ` +
  `${stats.orphans} orphaned sandbox processes (of ${stats.treeProcs} processes in the killed ` +
  `servers' trees, ${stats.sandboxProcs} of them bwrap/sandbox-init; ${stats.cgroupLeft} empty ` +
  `sandbox cgroup dirs left after the last kill), ${stats.interrupted} prompts interrupted by a kill ` +
  `(marked failed at restart), ${stats.promptsDone}/${stats.promptsAcked} prompts finished, ` +
  `${stats.execs} execs, ${stats.snapshots} snapshots, ${stats.wsEvents} events streamed to ` +
  `WebSocket clients (${stats.wsGaps} gaps)`);
if (TAP) {
  const ok = (what, cond) => console.log(`${cond ? 'ok' : 'not ok'} - ${TAP}: ${what}`);
  ok('the run completed', !problems.some((p) => p.startsWith('the run broke')));
  ok(`messages were acknowledged (${stats.acked})`, stats.acked > 0);
  ok('no acknowledged message lost', stats.lost === 0 && stats.verified > 0);
  ok('seq has no gap', stats.gaps === 0);
  ok(`integrity_check ok on every file (${stats.filesChecked})`, stats.integrity === 0 && stats.filesChecked > 0);
  ok('no orphaned sandbox', stats.orphans === 0);
  ok('every acknowledged prompt finished after the restarts (interrupted ones failed)', stats.promptsDone === stats.promptsAcked);
  ok('WebSocket clients saw contiguous seqs', stats.wsGaps === 0);
}
// the workspaces' disks (sandbox/wsdisk.h) stay mounted after the server: unmount them first
for (const m of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4])
  .filter((x) => x && x.startsWith(`${tmp}/`)).sort().reverse()) {
  try { execFileSync('umount', ['-l', m]); } catch { /* gone */ }
}
if (!problems.length && !process.env.KEEP_TMP) fs.rmSync(tmp, { recursive: true, force: true });
else console.error(`# data and log kept in ${tmp}`);
process.exit(problems.length ? 1 : 0);
