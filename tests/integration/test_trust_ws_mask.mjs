// test_trust_ws_mask.mjs - RFC 6455 §5.1: a client must mask its frames and the server must
// close the connection (1002) on one that is not masked. libwebsockets 4.1 took an unmasked
// frame as masked with a zero key and processed it. A raw TCP client performs the upgrade by
// hand, then sends frames of its own making: masked ones still work, an unmasked `prompt` is
// never processed and the client gets a close frame with status 1002.
import crypto from 'node:crypto';
import net from 'node:net';
import { Tap, Server, api, newSession, sleep } from './wslib.mjs';

const t = new Tap('test_trust_ws_mask');
const srv = await new Server().start();
const sid = await newSession(srv);

// A client frame: FIN + opcode, then the payload, masked with a random key unless told not.
function frame(opcode, payload, masked = true) {
  const data = Buffer.from(payload);
  const len = data.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, (masked ? 0x80 : 0) | len])
    : Buffer.from([0x80 | opcode, (masked ? 0x80 : 0) | 126, len >> 8, len & 0xff]);
  if (!masked) return Buffer.concat([head, data]);
  const key = crypto.randomBytes(4);
  const body = Buffer.from(data.map((b, i) => b ^ key[i & 3]));
  return Buffer.concat([head, key, body]);
}

// Server frames (never masked) out of a byte stream: [{opcode, payload}], rest kept.
function parseFrames(state) {
  const out = [];
  for (;;) {
    const b = state.buf;
    if (b.length < 2) break;
    let len = b[1] & 0x7f, off = 2;
    if (len === 126) { if (b.length < 4) break; len = b.readUInt16BE(2); off = 4; }
    else if (len === 127) { if (b.length < 10) break; len = Number(b.readBigUInt64BE(2)); off = 10; }
    if (b.length < off + len) break;
    out.push({ opcode: b[0] & 0x0f, payload: b.subarray(off, off + len) });
    state.buf = b.subarray(off + len);
  }
  return out;
}

// Open a raw connection and do the handshake; resolves with a small client object.
function rawConnect() {
  return new Promise((resolve, reject) => {
    const s = net.connect(srv.port, '127.0.0.1');
    const st = { buf: Buffer.alloc(0), head: null, frames: [], closed: false, waiters: [] };
    const key = crypto.randomBytes(16).toString('base64');
    s.on('connect', () => {
      s.write(`GET /v1/sessions/${sid}/ws HTTP/1.1\r\nHost: 127.0.0.1:${srv.port}\r\n` +
        `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\n` +
        `Sec-WebSocket-Version: 13\r\nAuthorization: Bearer ${srv.admin}\r\n\r\n`);
    });
    const wake = () => { for (const w of st.waiters.splice(0)) w(); };
    s.on('data', (d) => {
      st.buf = Buffer.concat([st.buf, d]);
      if (st.head === null) {
        const i = st.buf.indexOf('\r\n\r\n');
        if (i < 0) return;
        st.head = st.buf.subarray(0, i).toString('latin1');
        st.buf = st.buf.subarray(i + 4);
        if (!/^HTTP\/1\.1 101/.test(st.head)) return reject(new Error('handshake: ' + st.head));
        resolve({ s, st, wait });
      }
      st.frames.push(...parseFrames(st));
      wake();
    });
    s.on('error', () => {});
    s.on('close', () => { st.closed = true; wake(); if (st.head === null) reject(new Error('closed')); });
    async function wait(pred, ms = 5000) {
      const end = Date.now() + ms;
      while (!pred() && Date.now() < end) {
        await new Promise((r) => { st.waiters.push(r); setTimeout(r, 100); });
      }
      return pred();
    }
  });
}
const texts = (st) => st.frames.filter((f) => f.opcode === 1).map((f) => { try { return JSON.parse(f.payload); } catch { return {}; } });

// ---- masked frames still work ----
{
  const c = await rawConnect();
  t.ok('the hand-made handshake is answered 101', /^HTTP\/1\.1 101/.test(c.st.head), c.st.head);
  t.ok('hello arrives', await c.wait(() => texts(c.st).some((m) => m.type === 'hello')), texts(c.st));
  c.s.write(frame(1, JSON.stringify({ type: 'ping' })));
  t.ok('a masked ping is answered with pong', await c.wait(() => texts(c.st).some((m) => m.type === 'pong')), texts(c.st));
  c.s.write(frame(1, JSON.stringify({ type: 'prompt', content: 'masked comment', run: false, id: 'c1' })));
  t.ok('a masked prompt is acknowledged', await c.wait(() => texts(c.st).some((m) => m.type === 'ack')), texts(c.st));
  // A payload of more than 125 bytes: the 16-bit length form.
  c.s.write(frame(1, JSON.stringify({ type: 'ping', pad: 'x'.repeat(300) })));
  t.ok('a masked 16-bit-length frame works', await c.wait(() => texts(c.st).filter((m) => m.type === 'pong').length >= 2), texts(c.st));
  c.s.destroy();
}

// ---- an unmasked frame: close 1002, never processed ----
{
  const c = await rawConnect();
  await c.wait(() => texts(c.st).some((m) => m.type === 'hello'));
  c.s.write(frame(1, JSON.stringify({ type: 'prompt', content: 'UNMASKED comment', run: false, id: 'c2' }), false));
  const closed = await c.wait(() => c.st.closed);
  const close = c.st.frames.find((f) => f.opcode === 8);
  const code = close && close.payload.length >= 2 ? close.payload.readUInt16BE(0) : null;
  t.ok(`the server sends a close frame with status 1002 (got ${code})`, code === 1002, c.st.frames.map((f) => f.opcode));
  t.ok('and closes the connection', closed);
  t.ok('no ack for the unmasked prompt', !texts(c.st).some((m) => m.type === 'ack' || m.type === 'error'), texts(c.st));
  await sleep(200);
  const r = await api(srv, 'GET', `/v1/sessions/${sid}/messages?limit=100`);
  const contents = ((r.body && r.body.messages) || []).map((m) => m.content);
  t.ok('the unmasked prompt was not stored', !contents.includes('UNMASKED comment') && contents.includes('masked comment'), contents);
}

// ---- an unmasked ping (a control frame) too ----
{
  const c = await rawConnect();
  await c.wait(() => texts(c.st).some((m) => m.type === 'hello'));
  c.s.write(frame(9, 'hi', false));
  await c.wait(() => c.st.closed);
  const close = c.st.frames.find((f) => f.opcode === 8);
  t.ok('an unmasked control frame: close 1002 too', close && close.payload.readUInt16BE(0) === 1002 &&
    !c.st.frames.some((f) => f.opcode === 10), c.st.frames.map((f) => f.opcode));
}

// The server is fine afterwards.
const h = await api(srv, 'GET', '/healthz');
t.ok('the server still answers', h.status === 200);
await srv.stop();
t.done();
