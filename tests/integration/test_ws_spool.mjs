// test_ws_spool.mjs - comments parked in the spool (a hibernated session, cap 1) reach the
// session's WebSocket clients live, in seq order, with no gap or duplicate, while other
// requests wake the session and let it hibernate again in between; what the clients saw is
// exactly what the session stores (same serializer, same ts), and a client that connects
// later with ?after= misses nothing.
import { Tap, Server, api, newSession, postMessage, connect, contiguous, sleep } from './wslib.mjs';

const t = new Tap('test_ws_spool');
const srv = new Server(['--max-open-sessions', '1']);
await srv.start();

async function metric(name) {
  const r = await fetch(srv.base + '/metrics', { headers: { Authorization: `Bearer ${srv.admin}` } });
  const line = (await r.text()).split('\n').find((l) => l.startsWith(name + ' '));
  return line ? Number(line.split(' ')[1]) : NaN;
}

try {
  const A = await newSession(srv);
  const B = await newSession(srv);
  const c = await connect(srv, A);
  const hello = await c.next((f) => f.type === 'hello');
  t.ok('hello', !!hello, c.closeInfo);
  // hibernate A: open B (cap 1) and wait for the close worker
  const hibernate = async () => {
    await api(srv, 'GET', `/v1/sessions/${B}/events?limit=1`);
    for (let i = 0; i < 200; i++) {
      if ((await metric('sessiond_sessions_open')) === 1) return true;
      await sleep(25);
    }
    return false;
  };
  // The WebSocket join writes presence events through the session: wait for them first.
  await sleep(200);
  t.ok('A hibernated while a client watches it', await hibernate());
  const p0 = await metric('sessiond_session_parked_total');
  let stop = false;
  let posted = 0;
  let failed = 0;
  const posters = Array.from({ length: 4 }, async (_, k) => {
    for (let i = 0; i < 60; i++) {
      const r = await postMessage(srv, A, `c${k}-${i}`);
      if (r.status === 202) posted++;
      else failed++;
    }
  });
  // Meanwhile wake A (a read folds the spool) and let it hibernate again, a few times.
  const waker = (async () => {
    while (!stop) {
      await sleep(60);
      await api(srv, 'GET', `/v1/sessions/${A}/events?limit=1`);
      await sleep(30);
      await hibernate();
    }
  })();
  await Promise.all(posters);
  stop = true;
  await waker;
  t.ok('every comment acknowledged', posted === 240 && failed === 0, { posted, failed });
  const parked = (await metric('sessiond_session_parked_total')) - p0;
  const folds = await metric('sessiond_spool_folds_total');
  t.ok('comments were parked, and folded by the wake-ups', parked > 20 && folds >= 1, { parked, folds });
  const N = (await api(srv, 'GET', `/v1/sessions/${A}`)).body.last_seq;
  t.ok('the live stream reached the last seq', await c.waitSeq(N, 15000), { N, got: c.lastSeq() });
  const live = c.events();
  t.ok('live: strictly increasing, no gap, no duplicate', contiguous(live.map((e) => e.seq), hello.last_seq + 1, N),
    { first: live[0] && live[0].seq, n: live.length, from: hello.last_seq + 1, N });
  const stored = [];
  for (let after = hello.last_seq; ;) {
    const r = await api(srv, 'GET', `/v1/sessions/${A}/events?after=${after}&limit=1000`);
    stored.push(...r.body.events);
    if (!r.body.events.length || r.body.events[r.body.events.length - 1].seq >= N) break;
    after = r.body.events[r.body.events.length - 1].seq;
  }
  t.ok('what clients saw live is exactly what the session stores', JSON.stringify(live) === JSON.stringify(stored),
    { live: live.slice(0, 2), stored: stored.slice(0, 2) });
  const mine = stored.filter((e) => e.type === 'message').map((e) => e.data.content);
  t.ok('all 240 comments stored once', mine.length === 240 && new Set(mine).size === 240, { n: mine.length });
  // a late client catching up from the start of the burst
  const late = await connect(srv, A, { after: hello.last_seq });
  await late.next((f) => f.type === 'hello');
  t.ok('a late client with ?after= catches up', await late.waitSeq(N, 15000));
  t.ok('late client: contiguous', contiguous(late.events().map((e) => e.seq).filter((s) => s <= N), hello.last_seq + 1, N));
  await late.close();
  await c.close();
} catch (e) {
  t.ok('no exception', false, e.stack + '\n' + srv.logTail());
}
await srv.stop();
t.done();
