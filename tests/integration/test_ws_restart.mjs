// test_ws_restart.mjs - server restart (SIGTERM and SIGKILL) during a burst: a client that
// reconnects with ?after=<its last seq> misses nothing and sees no duplicate.
import { Tap, Server, api, newSession, postMessage, connect, contiguous, sleep } from './wslib.mjs';

const t = new Tap('test_ws_restart');
const srv = new Server();
await srv.start();
try {
  const sid = await newSession(srv);
  for (const signal of ['SIGTERM', 'SIGKILL']) {
    const c = await connect(srv, sid);
    const hello = await c.next((f) => f.type === 'hello');
    // A burst that is still running when the server goes down.
    let stop = false;
    const posters = Array.from({ length: 4 }, async () => {
      while (!stop) {
        try { await postMessage(srv, sid, 'restart burst'); } catch { await sleep(20); }
      }
    });
    await sleep(400);
    await srv.stop(signal);
    stop = true;
    await Promise.all(posters);
    const ci = await c.closed;
    if (signal === 'SIGTERM') t.ok('SIGTERM: clients are closed with 1001 (going away)', ci.code === 1001, ci);
    const seen = c.events().map((e) => e.seq);
    t.ok(`${signal}: the client saw a strictly increasing prefix`, contiguous(seen, hello.last_seq + 1, hello.last_seq + seen.length), { n: seen.length });
    const last = seen.length ? seen[seen.length - 1] : hello.last_seq;
    await srv.start();
    const N0 = (await api(srv, 'GET', `/v1/sessions/${sid}`)).body.last_seq;
    if (signal === 'SIGTERM') {
      const evs = (await api(srv, 'GET', `/v1/sessions/${sid}/events?after=${last}&limit=1000`)).body.events;
      t.ok('SIGTERM: a graceful stop writes participant.left', evs.some((e) => e.type === 'participant.left'), evs.map((e) => e.type));
    }
    t.ok(`${signal}: every acknowledged event survived`, N0 >= last, { N0, last });
    const r = await connect(srv, sid, { after: last });
    const rh = await r.next((f) => f.type === 'hello');
    t.ok(`${signal}: reconnect gets hello`, !!rh, r.closeInfo);
    for (let i = 0; i < 20; i++) await postMessage(srv, sid, 'after restart ' + i);
    const N = (await api(srv, 'GET', `/v1/sessions/${sid}`)).body.last_seq;
    await r.waitSeq(N, 15000);
    const rs = r.events().map((e) => e.seq);
    t.ok(`${signal}: reconnect with ?after=${last} misses nothing (${last + 1}..${N})`, contiguous(rs, last + 1, N),
      { n: rs.length, first: rs.slice(0, 3), last: rs.slice(-3) });
    await r.close();
    await sleep(100);
  }
} catch (e) {
  t.ok('no exception', false, e.stack + '\n' + srv.logTail());
}
await srv.stop();
t.done();
