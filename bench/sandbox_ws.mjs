// bench/sandbox_ws.mjs - sustained agent output end to end: a prompt of the scripted agent
// prints N lines of 100 bytes; we measure MB/s committed into events (server timestamps of
// prompt.started → prompt.completed) and MB/s received by a WebSocket client, the time from
// POST to the first agent.output on the WebSocket, and the server's RSS with 50 idle + 10 busy
// sandboxes. Usage: node bench/sandbox_ws.mjs [local|process] [lines]
import fs from 'node:fs';
import { startServer, api, connect, newSession, sleep } from '../tests/integration/wslib.mjs';

const backend = process.argv[2] || 'local';
const lines = parseInt(process.argv[3] || '500000', 10);
const srv = await startServer(['--sandbox', backend, '--agent', 'scripted', '--max-unfinished-prompts', '100',
  '--ws-send-queue-max', String(256 << 20)]);
const rss = () => {
  const s = fs.readFileSync(`/proc/${srv.proc.pid}/status`, 'utf8');
  return parseInt(s.match(/VmRSS:\s+(\d+)/)[1], 10);
};

try {
  const sid = await newSession(srv);
  const c = await connect(srv, sid);
  await c.next((f) => f.type === 'hello');
  // warm the sandbox
  await api(srv, 'POST', `/v1/sessions/${sid}/exec`, { argv: ['true'] });

  // first agent output on the WebSocket
  const lat = [];
  for (let i = 0; i < 10; i++) {
    const from = c.frames.length;
    const t0 = performance.now();
    const r = await api(srv, 'POST', `/v1/sessions/${sid}/messages`, { content: 'hello ' + i });
    const pid = r.body.prompt_id;
    const isOut = (e) => e.type === 'agent.output' && e.data.prompt_id === pid;
    await c.next((f) => (f.type === 'event' && isOut(f.event)) || (f.type === 'events' && f.events.some(isOut)), 10000, from);
    lat.push(performance.now() - t0);
    const isDone = (e) => e.type === 'prompt.completed' && e.data.prompt_id === pid;
    await c.next((f) => (f.type === 'event' && isDone(f.event)) || (f.type === 'events' && f.events.some(isDone)), 10000, from);
  }
  lat.sort((a, b) => a - b);
  console.log(`prompt POST -> first agent.output on WebSocket: p50 ${lat[5].toFixed(1)} ms, max ${lat[9].toFixed(1)} ms`);

  // sustained output
  const from = c.frames.length;
  const t0 = performance.now();
  const r = await api(srv, 'POST', `/v1/sessions/${sid}/messages`, { content: `flood ${lines}` });
  const pid = r.body.prompt_id;
  const isEnd = (e) => e.data && e.data.prompt_id === pid && e.type.startsWith('prompt.') && e.type !== 'prompt.started';
  await c.next((f) => (f.type === 'event' && isEnd(f.event)) || (f.type === 'events' && f.events.some(isEnd)), 300000, from);
  const wsSecs = (performance.now() - t0) / 1000;
  const tPost = Date.now() - wsSecs * 1000;
  let bytes = 0, nev = 0, started = 0, ended = 0, gaps = 0;
  for (const f of c.frames.slice(from)) {
    if (f.type === 'gap') gaps++;
    const evs = f.type === 'event' ? [f.event] : f.type === 'events' ? f.events : [];
    for (const e of evs) {
      if (e.data && e.data.prompt_id !== pid) continue;
      if (e.type === 'agent.output') { bytes += Buffer.byteLength(e.data.text); nev++; }
      if (e.type === 'prompt.started') started = Date.parse(e.ts);
      if (isEnd(e)) ended = Date.parse(e.ts);
    }
  }
  // Server timestamps from the stored events (the client may have been sent `gap`s).
  {
    let after = 0;
    for (;;) {
      const er = await api(srv, 'GET', `/v1/sessions/${sid}/events?after=${after}&limit=1000`);
      for (const e of er.body.events) {
        if (e.data && e.data.prompt_id === pid && e.type === 'prompt.started') started = Date.parse(e.ts);
        if (isEnd(e)) ended = Date.parse(e.ts);
      }
      if (!er.body.has_more) break;
      after = er.body.next_after;
    }
  }
  const commitSecs = (ended - started) / 1000;
  if (process.env.DEBUG) console.log({ tPost, started, ended, wsEnd: Date.now() });
  console.log(`sustained output: ${(lines * 100 / 1e6).toFixed(0)} MB of 100-byte lines in ${nev} events; ` +
    `committed ${(lines * 100 / 1e6 / commitSecs).toFixed(1)} MB/s (prompt.started -> end ${commitSecs.toFixed(2)} s); ` +
    `received on WebSocket ${(bytes / 1e6).toFixed(1)} MB at ${(bytes / 1e6 / wsSecs).toFixed(1)} MB/s (POST -> end ${wsSecs.toFixed(2)} s, gaps ${gaps})`);
  c.close();

  // 50 idle + 10 busy sandboxes
  const rss0 = rss();
  const sids = [];
  const t1 = performance.now();
  for (let i = 0; i < 60; i++) {
    const s = await newSession(srv);
    sids.push(s);
    await api(srv, 'POST', `/v1/sessions/${s}/exec`, { argv: ['true'] });
  }
  const startSecs = (performance.now() - t1) / 1000;
  for (let i = 50; i < 60; i++) await api(srv, 'POST', `/v1/sessions/${sids[i]}/messages`, { content: 'flood 300000' });
  await sleep(1500);
  const rssBusy = rss();
  console.log(`60 sandboxes (session + first exec) in ${startSecs.toFixed(1)} s; server RSS ${rss0} KiB before, ${rssBusy} KiB with 50 idle + 10 busy`);
} finally {
  await srv.stop();
  srv.kill();
}
process.exit(0);
