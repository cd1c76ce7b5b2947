// test_ws_stream.mjs - the WebSocket stream under load: resume with ?after=K during a burst of
// 5,000 events yields exactly K+1..N; an unbounded replay is paged; a client that stops reading
// gets `gap` or is closed while another client still receives everything.
import { Tap, startServer, api, newSession, postMessage, connect, contiguous, sleep } from './wslib.mjs';

const t = new Tap('test_ws_stream');

/** Post count messages with `conc` requests in flight; onProgress(i) after each. */
async function burst(srv, sid, count, conc, content, onProgress) {
  let next = 0;
  let failed = 0;
  async function worker() {
    while (next < count) {
      const i = next++;
      const r = await postMessage(srv, sid, typeof content === 'function' ? content(i) : content);
      if (r.status !== 202) failed++;
      if (onProgress) await onProgress(i);
    }
  }
  await Promise.all(Array.from({ length: conc }, worker));
  return failed;
}

// ---- resume during a burst ----
{
  const srv = await startServer();
  try {
    const sid = await newSession(srv);
    await burst(srv, sid, 300, 4, (i) => 'warm ' + i);
    const K = 150;
    const live = await connect(srv, sid);
    const liveHello = await live.next((f) => f.type === 'hello');
    let resumed = null;
    const failed = await burst(srv, sid, 5000, 16, (i) => 'burst ' + i, async (i) => {
      if (i === 800 && !resumed) resumed = connect(srv, sid, { after: K });
    });
    t.ok('burst of 5,000 REST posts accepted', failed === 0, failed);
    const r = await resumed;
    const N = (await api(srv, 'GET', `/v1/sessions/${sid}`)).body.last_seq;
    await r.waitSeq(N, 30000);
    await live.waitSeq(N, 30000);
    const rs = r.events().map((e) => e.seq);
    t.ok(`resume with ?after=${K} mid-burst yields exactly ${K + 1}..${N}`, contiguous(rs, K + 1, N),
      { n: rs.length, first: rs.slice(0, 5), last: rs.slice(-5), dup: rs.length - new Set(rs).size });
    const ls = live.events().map((e) => e.seq);
    t.ok('a live client sees every event after its hello exactly once', contiguous(ls, liveHello.last_seq + 1, N), { n: ls.length, from: liveHello.last_seq });
    const batches = live.frames.filter((f) => f.type === 'events').length;
    console.error(`# live client: ${live.frames.length} frames for ${ls.length} events (${batches} batched frames)`);
    t.ok('no gap for clients that keep up', !live.frames.some((f) => f.type === 'gap') && !r.frames.some((f) => f.type === 'gap'));
    // No replay cap: a client from 0 gets all N (many pages).
    const full = await connect(srv, sid, { after: 0 });
    await full.waitSeq(N, 30000);
    const fs = full.events().map((e) => e.seq);
    t.ok(`replay from 0 is complete (${N} events, paged)`, contiguous(fs.slice(0, N), 1, N) && fs.length >= N, { n: fs.length });
    t.ok('replay arrives in several `events` pages', full.frames.filter((f) => f.type === 'events').length >= Math.floor(N / 256));
    for (const c of [live, r, full]) await c.close();
  } catch (e) {
    t.ok('resume: no exception', false, e.stack + '\n' + srv.logTail());
  }
  await srv.stop();
}

// ---- a client that stops reading ----
{
  const srv = await startServer(['--ws-send-queue-max', '1048576']);
  try {
    const sid = await newSession(srv);
    const fast = await connect(srv, sid);
    const fh = await fast.next((f) => f.type === 'hello');
    const slow = await connect(srv, sid);
    await slow.next((f) => f.type === 'hello');
    slow.ws._socket.pause(); // stop reading: the kernel buffers fill, then the hub's queue
    const pad = 'z'.repeat(4000);
    const failed = await burst(srv, sid, 5000, 16, (i) => `slow ${i} ${pad}`);
    t.ok('burst accepted while a client is stuck', failed === 0, failed);
    const N = (await api(srv, 'GET', `/v1/sessions/${sid}`)).body.last_seq;
    await fast.waitSeq(N, 30000);
    const fsq = fast.events().map((e) => e.seq);
    t.ok('the client that reads receives everything', contiguous(fsq, fh.last_seq + 1, N), { n: fsq.length, last: fsq.slice(-3), gaps: fast.frames.filter((f) => f.type === 'gap'), close: fast.closeInfo });
    slow.ws._socket.resume();
    await Promise.race([slow.waitSeq(N, 15000), slow.closed]);
    await sleep(200);
    const gap = slow.frames.find((f) => f.type === 'gap');
    // Closed with 1008, or dropped without a close frame (1006) when it did not even read the
    // close within 3 s: the server logs the cull either way.
    const culled = srv.logTail(100000).includes('hub: closing stuck client');
    const closed = slow.closeInfo && (slow.closeInfo.code === 1008 || (slow.closeInfo.code === 1006 && culled));
    t.ok('the stuck client got a gap notice or was closed', !!gap || closed, { close: slow.closeInfo, frames: slow.frames.length, culled });
    const ss = slow.events().map((e) => e.seq);
    let increasing = true;
    for (let i = 1; i < ss.length; i++) if (ss[i] <= ss[i - 1]) increasing = false;
    t.ok('what the stuck client got is strictly increasing', increasing);
    if (gap) {
      const before = slow.frames.slice(0, slow.frames.indexOf(gap)).flatMap((f) => f.type === 'event' ? [f.event.seq] : f.type === 'events' ? f.events.map((e) => e.seq) : []);
      t.ok('gap.after_seq is the last event delivered before it', gap.after_seq === (before.length ? before[before.length - 1] : gap.after_seq), { gap, last: before.slice(-1) });
      const after = ss.filter((s) => s > gap.after_seq);
      t.ok('after the gap the stream resumes at gap.next_seq', after.length === 0 || after[0] >= gap.next_seq, { gap, next: after[0] });
    }
    const st = await api(srv, 'GET', `/v1/sessions/${sid}`);
    t.ok('server still serves REST after culling', st.status === 200);
    await fast.close();
    await slow.close();
  } catch (e) {
    t.ok('slow client: no exception', false, e.stack + '\n' + srv.logTail());
  }
  await srv.stop();
}
// ---- hibernation: connected clients do not pin session files ----
{
  const srv = await startServer(['--max-open-sessions', '2']);
  try {
    const sids = [];
    for (let i = 0; i < 6; i++) sids.push(await newSession(srv));
    const cs = [];
    for (const s of sids) {
      const c = await connect(srv, s);
      await c.next((f) => f.type === 'hello');
      cs.push(c);
    }
    for (let round = 0; round < 5; round++) {
      for (const s of sids) await postMessage(srv, s, `round ${round}`);
    }
    let all = true;
    for (let i = 0; i < sids.length; i++) {
      const N = (await api(srv, 'GET', `/v1/sessions/${sids[i]}`)).body.last_seq;
      if (!(await cs[i].waitSeq(N, 10000))) all = false;
      if (cs[i].events().filter((e) => e.type === 'message').length !== 5) all = false;
    }
    t.ok('6 sessions with clients stream through an LRU of 2 open files', all);
    const r = await connect(srv, sids[0], { after: 0 });
    const N0 = (await api(srv, 'GET', `/v1/sessions/${sids[0]}`)).body.last_seq;
    t.ok('replay of a hibernated session works', await r.waitSeq(N0, 10000));
    for (const c of [...cs, r]) await c.close();
  } catch (e) {
    t.ok('hibernation: no exception', false, e.stack + '\n' + srv.logTail());
  }
  await srv.stop();
}
t.done();
