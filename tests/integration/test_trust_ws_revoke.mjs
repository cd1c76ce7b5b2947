// test_trust_ws_revoke.mjs - WebSocket access ends with its grant. Attacks performed:
//  - keep a socket open (and keep a ws-ticket in the pocket) while the token is revoked: the
//    socket must close with 4401 promptly and the ticket must be refused;
//  - open sockets with a token while it is being revoked: none may survive the revocation;
//  - keep a socket open past the expiry of its token: it must close (4401);
//  - a participant removed from a private session keeps their open socket, their ticket and
//    their REST reads: the socket must close (4403), the ticket and reads must be refused,
//    while their socket on another session and everybody else's stay open.
import { Tap, startServer, api, makeToken, newSession, postMessage, connect, sleep, WebSocket } from './wslib.mjs';

const t = new Tap('test_trust_ws_revoke');
const srv = await startServer();
const evIn = (f, pred) => (f.type === 'event' && pred(f.event)) || (f.type === 'events' && f.events.some(pred));
const closedWithin = (c, ms) => Promise.race([c.closed, sleep(ms).then(() => null)]);
async function refused(sid, opts) {
  const c = await connect(srv, sid, opts);
  const ci = await closedWithin(c, 5000);
  return { ci, hello: c.frames.find((f) => f.type === 'hello'), err: c.frames.find((f) => f.type === 'error') };
}
async function mint(user, role = 'user') {
  const r = await api(srv, 'POST', '/v1/tokens', { user_id: user, name: user, role });
  return { token: r.body.token, id: r.body.id };
}
try {
  const alice = await makeToken(srv, 'alice', 'user', 'Alice');
  const bob = await makeToken(srv, 'bob', 'user', 'Bob');
  const org = await newSession(srv, alice);

  // ---- a token revoked while its sockets are open ----
  const erin = await mint('erin');
  const other = await newSession(srv, alice);
  const e1 = await connect(srv, org, { token: erin.token });
  const e2 = await connect(srv, other, { token: erin.token });
  const a1 = await connect(srv, org, { token: alice });
  t.ok('erin is connected to two sessions', !!(await e1.next((f) => f.type === 'hello')) && !!(await e2.next((f) => f.type === 'hello')));
  await a1.next((f) => f.type === 'hello');
  const tk = await api(srv, 'POST', `/v1/sessions/${org}/ws-ticket`, {}, erin.token);
  t.ok('erin holds a ws-ticket minted before the revoke', tk.status === 201, tk.text);
  const t0 = Date.now();
  const del = await api(srv, 'DELETE', `/v1/tokens/${erin.id}`);
  t.ok('admin revokes erin\'s token', del.status === 204, del.text);
  const [c1, c2] = await Promise.all([closedWithin(e1, 3000), closedWithin(e2, 3000)]);
  const ms = Date.now() - t0;
  t.ok(`her open sockets close with 4401 promptly (${ms} ms after the DELETE was sent)`,
    c1 && c1.code === 4401 && c2 && c2.code === 4401 && ms < 2000, { c1, c2, ms });
  const errf = e1.frames.find((f) => f.type === 'error');
  t.ok('an error frame says why', errf && errf.code === 'unauthorized', e1.frames.slice(-2));
  const seen = e1.frames.length;
  await postMessage(srv, org, 'after the revoke', alice);
  const got = await a1.next((f) => evIn(f, (e) => e.type === 'message.created' || e.type === 'message'), 3000);
  t.ok('other users keep their sockets and get new events', !!got && a1.closeInfo === null, a1.frames.slice(-2));
  t.ok('the closed socket received nothing after the revoke', e1.frames.length === seen, e1.frames.slice(seen));
  let r = await refused(org, { token: null, query: { ticket: tk.body.ticket } });
  t.ok('the ticket minted before the revoke is refused (4401)', r.ci && r.ci.code === 4401 && !r.hello, r);
  r = await refused(org, { token: erin.token });
  t.ok('the revoked token cannot open a new socket (4401)', r.ci && r.ci.code === 4401 && !r.hello, r);

  // ---- a revoke racing with connections being opened: nothing survives ----
  const fay = await mint('fay');
  const opening = [];
  for (let i = 0; i < 12; i++) {
    opening.push(connect(srv, org, { token: fay.token }));
    if (i === 6) opening.push(api(srv, 'DELETE', `/v1/tokens/${fay.id}`));
    await sleep(2);
  }
  const settled = await Promise.all(opening);
  const socks = settled.filter((x) => x instanceof Object && x.ws);
  await Promise.all(socks.map((c) => closedWithin(c, 3000)));
  const alive = socks.filter((c) => c.ws.readyState === WebSocket.OPEN);
  t.ok(`no socket of a token revoked while ${socks.length} were opening survives`, alive.length === 0,
    alive.map((c) => c.frames.slice(0, 2)));

  // ---- a token that expires while its socket is open ----
  const gus = await api(srv, 'POST', '/v1/tokens', { user_id: 'gus', role: 'user', expires_in: 2 });
  const g1 = await connect(srv, org, { token: gus.body.token });
  t.ok('a token with expires_in: 2 connects', !!(await g1.next((f) => f.type === 'hello')), g1.frames);
  const gc = await closedWithin(g1, 5000);
  const gerr = g1.frames.find((f) => f.type === 'error');
  t.ok('its socket closes with 4401 when the token expires', gc && gc.code === 4401 && gerr && gerr.code === 'unauthorized', { gc, f: g1.frames.slice(-2) });

  // ---- a participant removed from a private session ----
  const priv = await newSession(srv, alice, { visibility: 'private' });
  let res = await api(srv, 'POST', `/v1/sessions/${priv}/participants`, { user_id: 'bob', role: 'writer' }, alice);
  t.ok('alice adds bob to her private session', res.status === 201, res.text);
  const b1 = await connect(srv, priv, { token: bob });
  const b2 = await connect(srv, org, { token: bob });
  const ad = await connect(srv, priv); // an admin watching: admins see every session
  const a2 = await connect(srv, priv, { token: alice });
  t.ok('bob is connected to the private session', !!(await b1.next((f) => f.type === 'hello')));
  await b2.next((f) => f.type === 'hello');
  await ad.next((f) => f.type === 'hello');
  await a2.next((f) => f.type === 'hello');
  const btk = await api(srv, 'POST', `/v1/sessions/${priv}/ws-ticket`, {}, bob);
  t.ok('bob holds a ticket for it', btk.status === 201, btk.text);
  const t1 = Date.now();
  res = await api(srv, 'DELETE', `/v1/sessions/${priv}/participants/bob`, undefined, alice);
  t.ok('alice removes bob (204)', res.status === 204, res.text);
  const bc = await closedWithin(b1, 3000);
  const ms2 = Date.now() - t1;
  t.ok(`bob's socket on the session closes with 4403 (${ms2} ms)`, bc && bc.code === 4403 && ms2 < 2000, { bc, ms2 });
  const berr = b1.frames.find((f) => f.type === 'error');
  t.ok('with an error frame saying forbidden', berr && berr.code === 'forbidden', b1.frames.slice(-2));
  r = await refused(priv, { token: null, query: { ticket: btk.body.ticket } });
  t.ok('bob\'s ticket minted before the removal is refused', r.ci && [4401, 4403, 4404].includes(r.ci.code) && !r.hello, r);
  r = await refused(priv, { token: bob });
  t.ok('bob cannot reconnect (4404: he may not even see it)', r.ci && r.ci.code === 4404 && !r.hello, r);
  res = await api(srv, 'GET', `/v1/sessions/${priv}`, undefined, bob);
  t.ok('bob\'s REST read of the session is refused', res.status === 404 || res.status === 403, res.text);
  res = await api(srv, 'GET', `/v1/sessions/${priv}/events`, undefined, bob);
  t.ok('bob\'s REST read of its events is refused', res.status === 404 || res.status === 403, res.text);
  const removed = await a2.next((f) => evIn(f, (e) => e.type === 'participant.removed' && e.data.user_id === 'token:bob'), 3000);
  t.ok('the others see participant.removed', !!removed, a2.frames.slice(-3));
  t.ok('the creator and the admin stay connected', a2.closeInfo === null && ad.closeInfo === null, { a2: a2.closeInfo, ad: ad.closeInfo });
  await postMessage(srv, org, 'bob still sees the org session', alice);
  const still = await b2.next((f) => evIn(f, (e) => e.data && e.data.content === 'bob still sees the org session'), 3000);
  t.ok('bob\'s socket on another session stays open', !!still && b2.closeInfo === null, b2.frames.slice(-2));

  for (const c of [a1, a2, ad, b2]) c.close();
} catch (e) {
  t.ok('no exception', false, e.stack);
}
await srv.stop();
t.done();
