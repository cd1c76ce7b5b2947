// test_ws.mjs - the WebSocket hub: hand-off on the REST port, hello, multiplayer order and
// presence, bad frames, refused connections (4401/4403/4404), tickets, prompts over the socket.
import { Tap, startServer, api, makeToken, newSession, postMessage, connect, sleep, WebSocket } from './wslib.mjs';

const t = new Tap('test_ws');
const srv = await startServer(['--ws-max-frame', '65536', '--origins', 'https://good.example']);
try {
  const alice = await makeToken(srv, 'alice', 'user', 'Alice');
  const bob = await makeToken(srv, 'bob', 'user', 'Bob');
  const viewer = await makeToken(srv, 'vic', 'viewer', 'Vic');
  const sid = await newSession(srv, alice);
  await postMessage(srv, sid, 'before anyone connected', alice);

  // ---- the hand-off: a WebSocket handshake on the REST port ----
  const a = await connect(srv, sid, { token: alice });
  t.ok('handshake on the REST port succeeds', a.ws.readyState === WebSocket.OPEN, a.error && a.error.message);
  const hello = await a.next((f) => f.type === 'hello');
  t.ok('hello frame first', a.frames[0] && a.frames[0].type === 'hello', a.frames[0]);
  t.ok('hello has last_seq, session, you', hello && hello.last_seq >= 2 && hello.session && hello.session.id === sid &&
    hello.you && hello.you.id === 'token:alice' && hello.you.role && Array.isArray(hello.participants), hello);
  const rest = await api(srv, 'GET', '/v1/sessions/' + sid);
  t.ok('REST still answers on the same port', rest.status === 200, rest.text);

  // ---- ping / pong ----
  a.send({ type: 'ping', id: 'p1' });
  const pong = await a.next((f) => f.type === 'pong');
  t.ok('ping gets pong with its id', pong && pong.id === 'p1', pong);

  // ---- two clients: each other's prompts and presence in the same order ----
  const b = await connect(srv, sid, { token: bob });
  await b.next((f) => f.type === 'hello');
  // Events come one per `event` frame or batched in an `events` frame (under load): look in both.
  const evIn = (f, pred) => (f.type === 'event' && pred(f.event)) || (f.type === 'events' && f.events.some(pred));
  const joined = await a.next((f) => evIn(f, (e) => e.type === 'participant.joined' && e.data.user.id === 'token:bob'));
  t.ok('A sees participant.joined of B', !!joined, a.frames.slice(-3));
  const pres = await api(srv, 'GET', '/v1/sessions/' + sid);
  const ids = (pres.body && pres.body.connected || []).map((u) => u.id).sort();
  t.ok('GET session lists who is connected', JSON.stringify(ids) === JSON.stringify(['token:alice', 'token:bob']), pres.body && pres.body.connected);

  // Interleave: prompts over the socket (both clients), REST posts, typing and status.
  const startA = a.frames.length;
  const startB = b.frames.length;
  a.send({ type: 'prompt', content: 'from alice over ws', run: false, id: 'a1' });
  b.send({ type: 'typing' });
  await postMessage(srv, sid, 'from bob over REST', bob);
  b.send({ type: 'prompt', content: 'from bob over ws', run: false, id: 'b1' });
  a.send({ type: 'status', status: 'idle' });
  await postMessage(srv, sid, 'from alice over REST', alice);
  const ackA = await a.next((f) => f.type === 'ack' || f.type === 'error', 5000, startA);
  const ackB = await b.next((f) => f.type === 'ack' || f.type === 'error', 5000, startB);
  // Prompts over the socket reuse the REST code path (ops_message_create in server/ops.c).
  const wsPrompts = true;
  const skip = '';
  t.ok('prompt frame is acked with the REST answer (message_id, seq)' + skip, !wsPrompts || (ackA && ackA.type === 'ack' && ackA.id === 'a1' &&
    ackA.result && ackA.result.message_id && ackA.result.seq > 0), ackA);
  t.ok('prompt frame of the second client is acked' + skip, !wsPrompts || (ackB && ackB.type === 'ack' && ackB.id === 'b1'), ackB);
  const lastSeq = (await api(srv, 'GET', `/v1/sessions/${sid}`)).body.last_seq;
  await a.waitSeq(lastSeq);
  await b.waitSeq(lastSeq);
  await a.next((f) => f.type === 'presence.status', 3000, startA);
  await b.next((f) => f.type === 'presence.status', 3000, startB);
  const shared = (fr) => fr.filter((f) => ['event', 'events', 'presence.typing', 'presence.status'].includes(f.type))
    .flatMap((f) => f.type === 'events' ? f.events.map((e) => 'e' + e.seq) : f.type === 'event' ? ['e' + f.event.seq] : [f.type + ':' + f.user.id]);
  const oa = shared(a.frames.slice(startA));
  const ob = shared(b.frames.slice(startB));
  t.ok('both clients see events and presence in the same order', oa.length >= 4 && JSON.stringify(oa) === JSON.stringify(ob), { oa, ob });
  const contents = a.events().filter((e) => e.type === 'message').map((e) => e.data.content);
  t.ok('prompts over ws and REST all arrive as message events', ['from alice over ws', 'from bob over ws', 'from bob over REST', 'from alice over REST']
    .every((c) => contents.includes(c)), contents);
  const wsMsg = a.events().find((e) => e.type === 'message' && e.data.content === 'from bob over ws');
  t.ok('a prompt frame is authored by its sender' + skip, wsMsg && wsMsg.author && wsMsg.author.id === 'token:bob', wsMsg);
  const typing = b.frames.find((f) => f.type === 'presence.typing');
  t.ok('typing is broadcast with the user, without a seq', typing && typing.user.id === 'token:bob' && typing.seq === undefined, typing);
  const restEvents = (await api(srv, 'GET', `/v1/sessions/${sid}/events?after=0&limit=1000`)).body.events;
  t.ok('typing is not persisted', !restEvents.some((e) => e.type.startsWith('presence')), restEvents.map((e) => e.type));
  const pres2 = await api(srv, 'GET', '/v1/sessions/' + sid);
  const al = (pres2.body.connected || []).find((u) => u.id === 'token:alice');
  t.ok('presence.status is visible in GET session', al && al.status === 'idle', pres2.body.connected);
  const restSame = !!wsMsg && JSON.stringify(restEvents.find((e) => e.seq === wsMsg.seq)) === JSON.stringify(wsMsg);
  t.ok('the WebSocket event object is exactly the REST one', restSame, wsMsg);

  // Presence frames are throttled per connection (a flood is dropped, never queued).
  await sleep(300); // past the previous presence frame of A
  const nTyping = b.frames.filter((f) => f.type === 'presence.typing').length;
  for (let i = 0; i < 50; i++) a.send({ type: 'typing' });
  a.send({ type: 'ping', id: 'after-flood' });
  await a.next((f) => f.type === 'pong' && f.id === 'after-flood');
  await sleep(200);
  const flood = b.frames.filter((f) => f.type === 'presence.typing').length - nTyping;
  t.ok('a typing flood is throttled', flood >= 1 && flood <= 3, flood);

  // A second tab of the same user is one participant.
  const a2 = await connect(srv, sid, { token: alice });
  await a2.next((f) => f.type === 'hello');
  await a2.close();
  await sleep(300);
  const evAfterTab = (await api(srv, 'GET', `/v1/sessions/${sid}/events?after=0&limit=1000`)).body.events;
  t.ok('a second tab of a user joins/leaves nothing', evAfterTab.filter((e) => e.type === 'participant.joined' && e.data.user.id === 'token:alice').length === 1 &&
    !evAfterTab.some((e) => e.type === 'participant.left' && e.data.user.id === 'token:alice'), evAfterTab.map((e) => e.type + ':' + (e.data.user ? e.data.user.id : '')));

  // B leaves: A sees participant.left.
  await b.close();
  const left = await a.next((f) => evIn(f, (e) => e.type === 'participant.left' && e.data.user.id === 'token:bob'));
  t.ok('A sees participant.left of B', !!left);

  // ---- bad frames ----
  let n0 = a.frames.length;
  a.send('{not json');
  const e1 = await a.next((f) => f.type === 'error', 3000, n0);
  t.ok('invalid JSON gets an error frame', e1 && e1.code === 'invalid', e1);
  n0 = a.frames.length;
  a.send({ type: 'nonsense' });
  const e2 = await a.next((f) => f.type === 'error', 3000, n0);
  t.ok('unknown frame type gets an error frame', e2 && e2.code === 'invalid', e2);
  n0 = a.frames.length;
  a.send({ type: 'prompt' });
  const e3 = await a.next((f) => f.type === 'error', 3000, n0);
  t.ok('prompt without content gets an error frame', e3 && e3.code === 'invalid', e3);
  n0 = a.frames.length;
  a.send({ type: 'ping', id: 2 });
  t.ok('connection still usable after bad frames', !!(await a.next((f) => f.type === 'pong', 3000, n0)));
  // Garbage of every shape: the connection answers errors and stays usable.
  const garbage = ['', '[]', '1', 'null', '"x"', '{}', '{"type":1}', '{"type":null}', '{"type":"prompt","content":5}',
    '{"type":"typing","typing":"yes"}', '{"type":"status","status":"sleeping"}', '{"type":"cancel","prompt_id":"../x"}',
    '{"type":"ping"', '{"type":"ping","type":"ping"}', '\u0000', '{"a":' + '['.repeat(5000) + ']'.repeat(5000) + '}'];
  for (let i = 0; i < 40; i++) garbage.push(JSON.stringify({ type: 'x'.repeat(i * 50), n: Math.random() }));
  n0 = a.frames.length;
  for (const g of garbage) a.send(g);
  a.send({ type: 'ping', id: 'post-garbage' });
  t.ok('garbage frames never break the connection', !!(await a.next((f) => f.type === 'pong' && f.id === 'post-garbage', 5000, n0)), a.closeInfo);
  const seqBefore = (await api(srv, 'GET', `/v1/sessions/${sid}`)).body.last_seq;

  const bin = await connect(srv, sid, { token: alice });
  await bin.next((f) => f.type === 'hello');
  bin.ws.send(Buffer.from([1, 2, 3]), { binary: true });
  const cb = await Promise.race([bin.closed, sleep(5000)]);
  t.ok('binary frame closes with 1003', cb && cb.code === 1003, cb);

  const big = await connect(srv, sid, { token: alice });
  await big.next((f) => f.type === 'hello');
  big.send({ type: 'prompt', content: 'x'.repeat(70000), run: false });
  const cbig = await Promise.race([big.closed, sleep(5000)]);
  t.ok('oversized message closes with 1009', cbig && cbig.code === 1009, cbig);

  const frag = await connect(srv, sid, { token: alice });
  await frag.next((f) => f.type === 'hello');
  // A fragmented message under the cap is reassembled.
  const fm = JSON.stringify({ type: 'ping', id: 'frag', pad: 'y'.repeat(20000) });
  frag.ws.send(fm.slice(0, 7000), { fin: false });
  frag.ws.send(fm.slice(7000, 15000), { fin: false });
  frag.ws.send(fm.slice(15000), { fin: true });
  const fp = await frag.next((f) => f.type === 'pong');
  t.ok('a fragmented message is reassembled', fp && fp.id === 'frag', frag.frames);
  await frag.close();
  await sleep(200);
  const seqAfter = (await api(srv, 'GET', `/v1/sessions/${sid}`)).body.last_seq;
  t.ok('bad frames wrote nothing', seqAfter === seqBefore, { seqBefore, seqAfter });

  // ---- refused connections: upgraded, an error frame, then a readable close code ----
  async function refused(opts, sidArg = sid) {
    const c = await connect(srv, sidArg, opts);
    const ci = await Promise.race([c.closed, sleep(5000).then(() => null)]);
    return { opened: c.ws.readyState !== WebSocket.CONNECTING && !c.error, ci, err: c.frames.find((f) => f.type === 'error'), c };
  }
  let r = await refused({ token: 'not-a-token' });
  t.ok('bad token: error frame then 4401', r.ci && r.ci.code === 4401 && r.err && r.err.code === 'unauthorized', { ci: r.ci, frames: r.c.frames, e: r.c.error && r.c.error.message });
  r = await refused({ token: null });
  t.ok('no credentials: 4401', r.ci && r.ci.code === 4401, r.ci);
  r = await refused({ token: alice }, 's_doesnotexist');
  t.ok('unknown session: error frame then 4404', r.ci && r.ci.code === 4404 && r.err && r.err.code === 'not_found', r.ci);
  r = await refused({ token: alice }, 'bad%20id!');
  t.ok('malformed session id: upgraded, then 4404', r.ci && r.ci.code === 4404, r.ci);
  r = await refused({ token: alice, origin: 'https://evil.example' });
  t.ok('wrong origin: 4403', r.ci && r.ci.code === 4403 && r.err && r.err.code === 'forbidden', r.ci);
  const same = await connect(srv, sid, { token: alice, origin: `http://127.0.0.1:${srv.port}` });
  t.ok('same-origin page (the built-in web UI) connects', !!(await same.next((f) => f.type === 'hello')), same.closeInfo);
  await same.close();
  const good = await connect(srv, sid, { token: alice, origin: 'https://good.example' });
  t.ok('allowed origin connects', !!(await good.next((f) => f.type === 'hello')), good.closeInfo);
  await good.close();
  r = await refused({ token: alice, after: 'abc' });
  t.ok('bad ?after= is refused with 1008', r.ci && r.ci.code === 1008, r.ci);
  const priv = await newSession(srv, alice, { visibility: 'private' });
  r = await refused({ token: bob }, priv);
  t.ok('private session of someone else: 4404', r.ci && r.ci.code === 4404, r.ci);

  // A viewer may watch but not prompt.
  const v = await connect(srv, sid, { token: viewer });
  const vh = await v.next((f) => f.type === 'hello');
  t.ok('viewer connects', vh && vh.you.role === 'viewer', vh);
  v.send({ type: 'prompt', content: 'nope', run: false });
  const ve = await v.next((f) => f.type === 'error');
  t.ok('viewer prompt gets error forbidden', ve && ve.code === 'forbidden', ve);
  await v.close();

  // cancel frame: the REST cancel without HTTP (nothing running here -> not_found).
  n0 = a.frames.length;
  a.send({ type: 'cancel', id: 'c1' });
  const cr = await a.next((f) => f.type === 'ack' || f.type === 'error', 5000, n0);
  t.ok('cancel frame is answered like REST POST …/cancel', cr && ((cr.type === 'ack' && cr.for === 'cancel') || (cr.type === 'error' && cr.code === 'not_found')), cr);

  // ---- tickets and ?token= ----
  const tk = await api(srv, 'POST', `/v1/sessions/${sid}/ws-ticket`, {}, bob);
  t.ok('ws-ticket issued', tk.status === 201 && /^[0-9a-f]{64}$/.test(tk.body.ticket), tk.text);
  const ct = await connect(srv, sid, { token: null, query: { ticket: tk.body.ticket } });
  const th = await ct.next((f) => f.type === 'hello');
  t.ok('ticket authenticates as its owner', th && th.you.id === 'token:bob', th || ct.closeInfo);
  await ct.close();
  r = await refused({ token: null, query: { ticket: tk.body.ticket } });
  t.ok('a ticket is single-use (4401 the second time)', r.ci && r.ci.code === 4401, r.ci);
  const tk2 = await api(srv, 'POST', `/v1/sessions/${sid}/ws-ticket`, {}, bob);
  r = await refused({ token: null, query: { ticket: tk2.body.ticket } }, priv);
  t.ok('a ticket is bound to its session', r.ci && (r.ci.code === 4401 || r.ci.code === 4404), r.ci);
  const cq = await connect(srv, sid, { token: null, query: { token: bob } });
  t.ok('?token= works', !!(await cq.next((f) => f.type === 'hello')));
  await cq.close();
  const logText = srv.logTail(100000);
  t.ok('?token= and ?ticket= values never reach the log', !logText.includes(bob) && !logText.includes(tk.body.ticket));

  // Plain GET without Upgrade still gets a clear HTTP answer.
  const plain = await api(srv, 'GET', `/v1/sessions/${sid}/ws`);
  t.ok('plain GET on /ws answers 426', plain.status === 426, plain.status);

  await a.close();
} catch (e) {
  t.ok('no exception', false, e.stack);
  console.error(srv.logTail());
}
await srv.stop();
t.done();
