// opencode-serve.mjs - one prompt through OpenCode's `serve` mode, for real text deltas.
//
// `opencode run --format json` prints a text part only once it is complete; the server's event
// feed (GET /event, SSE) carries every model delta. This driver is run by the OpenCode binary
// itself acting as Bun (BUN_BE_BUN=1), so it needs nothing that the CLI does not ship:
//
//   BUN_BE_BUN=1 opencode opencode-serve.mjs OPENCODE_BIN  < prompt
//
// It starts `OPENCODE_BIN serve` on a loopback port of the sandbox, follows its events, creates
// a session, posts the prompt (stdin) and prints one JSON line per event in the shape of
// `opencode run --format json` (step_start, tool_use, text, step_finish, error), plus
//   {"type":"text_delta","part":{"id","messageID"},"delta":"…"}
// for each model delta of an assistant text part (the whole `text` line follows at its end).
// Permission requests are approved once (the equivalent of `run --auto`). Exit status 0 when
// the run ended without error, 1 otherwise; the server is stopped before exiting.
const [bin] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const die = (msg) => {
  out({ type: 'error', error: { name: 'DriverError', data: { message: msg } } });
  process.exit(1);
};
if (!bin) die('usage: opencode-serve.mjs OPENCODE_BIN');

const prompt = await Bun.stdin.text();
const env = { ...process.env };
delete env.BUN_BE_BUN;
const srv = Bun.spawn([bin, 'serve', '--port', '0', '--hostname', '127.0.0.1'], {
  env, stdin: 'ignore', stdout: 'pipe', stderr: 'inherit',
});
// This process talks to the server directly (the server itself keeps the proxy settings: the
// model endpoint is reached through the egress proxy). Bun's fetch reads these at each call.
process.env.NO_PROXY = '127.0.0.1,localhost';
process.env.no_proxy = '127.0.0.1,localhost';
const stop = () => { try { srv.kill('SIGTERM'); } catch { /* gone */ } };
process.on('SIGTERM', () => { stop(); process.exit(143); });

// The server prints "opencode server listening on http://127.0.0.1:PORT".
const dec = new TextDecoder();
let base = '';
let head = '';
const reader = srv.stdout.getReader();
while (!base) {
  const { value, done } = await reader.read();
  if (done) die(`opencode serve exited before listening: ${head.slice(-500)}`);
  head += dec.decode(value, { stream: true });
  const m = /listening on (http:\/\/[^\s]+)/.exec(head);
  if (m) base = m[1].replace(/\/$/, '');
}
reader.releaseLock();
srv.stdout.cancel().catch(() => {});

const call = async (method, path, body) => {
  const r = await fetch(`${base}${path}`, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: HTTP ${r.status} ${text.slice(0, 300)}`);
  return text ? JSON.parse(text) : null;
};

let sid = '';
let failed = false;
let idle = null;
const idleSeen = new Promise((r) => { idle = r; });
const userMsgs = new Set();
const partType = new Map();
const printed = new Set();

function onEvent(ev) {
  const p = ev.properties || {};
  if (!sid || (p.sessionID && p.sessionID !== sid)) return;
  switch (ev.type) {
    case 'message.updated':
      if (p.info && p.info.role === 'user') userMsgs.add(p.info.id);
      break;
    case 'message.part.updated': {
      const part = p.part || {};
      if (userMsgs.has(part.messageID)) break;
      partType.set(part.id, part.type);
      const key = `${part.id}:${part.type === 'tool' ? part.state && part.state.status : ''}`;
      if (printed.has(key)) break;
      if (part.type === 'step-start') { printed.add(key); out({ type: 'step_start', part }); }
      else if (part.type === 'step-finish') { printed.add(key); out({ type: 'step_finish', part }); }
      else if (part.type === 'tool' && part.state && ['completed', 'error'].includes(part.state.status)) {
        printed.add(key); out({ type: 'tool_use', part });
      } else if ((part.type === 'text' || part.type === 'reasoning') && part.time && part.time.end) {
        printed.add(key); out({ type: part.type, part });
      }
      break;
    }
    case 'message.part.delta':
      if (p.field === 'text' && partType.get(p.partID) === 'text' && !userMsgs.has(p.messageID)) {
        out({ type: 'text_delta', part: { id: p.partID, messageID: p.messageID }, delta: p.delta });
      }
      break;
    case 'permission.asked':
    case 'permission.updated': {
      const id = p.id || (p.permission && p.permission.id);
      if (id) {
        call('POST', `/permission/${id}/reply`, { reply: 'once' })
          .catch(() => call('POST', `/session/${sid}/permissions/${id}`, { response: 'once' }))
          .catch((e) => process.stderr.write(`permission ${id}: ${e.message}\n`));
      }
      break;
    }
    case 'session.error':
      if (!failed) {
        out({ type: 'error', error: p.error || { name: 'UnknownError', data: { message: 'session error' } } });
      }
      failed = true;
      break;
    case 'session.status':
      if (p.status && p.status.type === 'idle') idle();
      break;
    case 'session.idle':
      idle();
      break;
    default:
  }
}

// Follow the event feed before anything happens in the session.
const pending = [];
const feed = fetch(`${base}/event`).then(async (r) => {
  const rd = r.body.getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await rd.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const chunk = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = chunk.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
      if (!data) continue;
      let ev;
      try { ev = JSON.parse(data); } catch { continue; }
      if (sid) onEvent(ev); else pending.push(ev);
    }
  }
}).catch(() => {});

try {
  const s = await call('POST', '/session', {});
  sid = s.id;
  for (const ev of pending.splice(0)) onEvent(ev);
  const res = await call('POST', `/session/${sid}/message`, { parts: [{ type: 'text', text: prompt }] });
  if (res && res.info && res.info.error && !failed) {
    failed = true;
    out({ type: 'error', error: res.info.error });
  }
  // The last parts and the idle status may trail the reply by a few events.
  await Promise.race([idleSeen, new Promise((r) => setTimeout(r, 2000))]);
} catch (e) {
  failed = true;
  out({ type: 'error', error: { name: 'DriverError', data: { message: e.message } } });
}
stop();
void feed;
process.exit(failed ? 1 : 0);
