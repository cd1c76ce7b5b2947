// bench/ws_ref_server.mjs - the reference for bench/ws: a minimal broadcast server built on the
// npm `ws` package (tests/node_modules). Same traffic shape as sessiond: clients connect to
// ws://host:port/s/<session>; POST /s/<session> {"content":…} assigns the next seq, serializes
// the event once and sends it to every client of the session. No storage, no auth: an upper
// bound for a single-threaded Node broadcaster on this machine.
//   node bench/ws_ref_server.mjs PORT_FILE
import http from 'node:http';
import fs from 'node:fs';
import { createRequire } from 'node:module';
const require = createRequire(new URL('../tests/package.json', import.meta.url));
const { WebSocketServer } = require('ws');

const sessions = new Map(); // id -> {seq, clients:Set}
const sess = (id) => { let s = sessions.get(id); if (!s) { s = { seq: 0, clients: new Set() }; sessions.set(id, s); } return s; };
const server = http.createServer((req, res) => {
  const m = /^\/s\/([A-Za-z0-9_-]+)$/.exec(req.url);
  if (req.method !== 'POST' || !m) { res.writeHead(404); res.end(); return; }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = JSON.parse(Buffer.concat(chunks).toString());
    const s = sess(m[1]);
    const seq = ++s.seq;
    const frame = JSON.stringify({ type: 'event', event: { seq, type: 'message', ts: new Date().toISOString(),
      author: { id: 'token:bench', name: 'bench' }, data: { message_id: 'm' + seq, prompt_id: null, role: 'user', content: body.content } } });
    for (const c of s.clients) c.send(frame);
    const out = JSON.stringify({ seq });
    res.writeHead(202, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(out) });
    res.end(out);
  });
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
server.on('upgrade', (req, socket, head) => {
  const m = /^\/s\/([A-Za-z0-9_-]+)$/.exec(req.url);
  if (!m) { socket.destroy(); return; }
  wss.handleUpgrade(req, socket, head, (ws) => {
    const s = sess(m[1]);
    s.clients.add(ws);
    ws.on('close', () => s.clients.delete(ws));
    ws.send(JSON.stringify({ type: 'hello', last_seq: s.seq }));
  });
});
server.keepAliveTimeout = 120000;
server.listen(0, '127.0.0.1', () => fs.writeFileSync(process.argv[2], String(server.address().port)));
