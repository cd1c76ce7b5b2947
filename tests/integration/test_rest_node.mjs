// The REST API driven from node through lib.mjs (which other tests build on): tokens,
// sessions, 200 concurrent posts from one process, restart, the request log.
import { startServer, Tap } from './lib.mjs';

const t = new Tap('test_rest_node');
const srv = t.track(await startServer());

await t.test('healthz and me', async () => {
  const h = await srv.json('GET', '/healthz', { token: null });
  if (h.status !== 'ok') throw new Error(JSON.stringify(h));
  const me = await srv.json('GET', '/v1/me');
  if (me.role !== 'admin') throw new Error(JSON.stringify(me));
});

const alice = await srv.createToken('alice');
t.ok(alice.token && alice.user_id === 'token:alice', 'createToken');
const s = await srv.createSession({ title: 'node' }, alice.token);
t.ok(/^s_/.test(s.id), 'createSession');

await t.test('200 concurrent posts get distinct seqs 2..201', async () => {
  const res = await Promise.all(Array.from({ length: 200 }, (_, i) =>
    srv.postMessage(s.id, `m${i}`, { token: alice.token })));
  const seqs = res.map((r) => r.seq).sort((a, b) => a - b);
  const want = Array.from({ length: 200 }, (_, i) => i + 2);
  if (JSON.stringify(seqs) !== JSON.stringify(want)) throw new Error(`seqs ${seqs.slice(0, 10)}...`);
});

const before = await srv.events(s.id, { token: alice.token });
t.equal(before.map((e) => e.seq), Array.from({ length: 201 }, (_, i) => i + 1), 'events 1..201 in order');

const r404 = await srv.api('GET', '/v1/sessions/s_nope');
t.equal([r404.status, r404.json?.error?.code], [404, 'not_found'], 'error body shape');

t.equal(await srv.restart(), 0, 'SIGTERM exits 0');
const after = await srv.events(s.id, { token: alice.token });
t.equal(after, before, 'same events after restart');

const lines = srv.logLines().filter((l) => l.msg === 'http: request');
t.ok(lines.length > 200 && lines.every((l) => l.method && l.path && l.status && l.us >= 0),
  'one request log line per request with method, path, status, us');
t.ok(!srv.logText().includes(alice.token), 'no token secret in the log');

t.equal(await srv.stop(), 0, 'stop');
t.done();
