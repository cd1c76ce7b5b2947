// test_trust_ws_guard_close.mjs - WebSocket clients that come and go must never make the
// server touch a freed connection. The guard's client socket is a dup of libmicrohttpd's, and
// epoll drops a registration only when every descriptor of the socket is closed: a close() of
// the guard's copy alone, while libmicrohttpd still held its own, left the socket registered,
// and its hang-up was then reported with the pointer of the freed connection (make soak
// crashed with "free(): invalid pointer" under client churn). Raw TCP clients upgrade to an
// unknown session (the server closes with 4404); some stay past the guard's linger and then
// write and reset, others reset or end at once, while the server may still be handing their
// socket over. The server must stay up. The use after free is caught deterministically by an
// ASan build (`make test SANITIZE=1`: a heap-use-after-free report without the fix); a plain
// build only crashes when the freed memory has been reused.
import net from 'node:net';
import { Tap, Server, api, sleep } from './wslib.mjs';

const t = new Tap('test_trust_ws_guard_close');
const srv = await new Server().start();
const N = 40;

function upgrade() {
  return new Promise((resolve) => {
    const s = net.connect(srv.port, '127.0.0.1');
    let got = Buffer.alloc(0);
    s.on('data', (d) => { got = Buffer.concat([got, d]); });
    s.on('error', () => {});
    s.on('connect', () => {
      s.write('GET /v1/sessions/s_nosuchsession/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n' +
        'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n' +
        `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer ${srv.admin}\r\n\r\n`);
      resolve({ s, got: () => got });
    });
  });
}

for (let round = 0; round < 2; round++) {
  const cs = await Promise.all(Array.from({ length: N }, upgrade));
  await sleep(500);
  t.ok(`round ${round}: the server answered the upgrades (101, then a close)`,
    cs.every((c) => c.got().toString('latin1').startsWith('HTTP/1.1 101')));
  await sleep(2600); // past the guard's linger: it has dropped every one of them
  for (const c of cs) {
    c.s.write(Buffer.from([0x81, 0x82, 1, 2, 3, 4, 0x61, 0x62])); // a masked text frame
  }
  await sleep(200);
  for (const c of cs) c.s.resetAndDestroy();
  await sleep(300);
  // Clients that go away at once, while the server may still be handing their socket over.
  for (let k = 0; k < 5; k++) {
    const quick = await Promise.all(Array.from({ length: N }, upgrade));
    await sleep(k * 5);
    for (const c of quick) (k % 2 ? c.s.end() : c.s.resetAndDestroy());
  }
  await sleep(500);
  const h = await api(srv, 'GET', '/healthz').catch((e) => ({ status: 0, text: String(e) }));
  t.ok(`round ${round}: the server is still up after the late writes`, h.status === 200, h);
}
await srv.stop();
t.ok('the server exits cleanly', srv.proc.exitCode === 0, { code: srv.proc.exitCode, signal: srv.proc.signalCode });
t.done();
