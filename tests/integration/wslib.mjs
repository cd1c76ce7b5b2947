// tests/integration/wslib.mjs - helpers for the WebSocket integration tests (node + npm `ws`).
//
//   const t = new Tap('test_ws');
//   const srv = await startServer(['--ws-max-frame', '65536']);
//   const sid = (await api(srv, 'POST', '/v1/sessions', {title: 'x'})).body.id;
//   const c = await connect(srv, sid);              // admin token by default
//   const hello = await c.next(f => f.type === 'hello');
//   t.ok('hello', hello.last_seq >= 1);
//   await srv.stop(); t.done();
//
// The server is the real $SESSIOND_BIN on 127.0.0.1:0 with a temp data dir, killed at exit.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';

export { WebSocket };

export class Tap {
  constructor(name) {
    this.name = name;
    this.failed = 0;
    this.passed = 0;
  }
  ok(what, cond, detail) {
    if (cond) {
      this.passed++;
      console.log(`ok - ${this.name}: ${what}`);
    } else {
      this.failed++;
      console.log(`not ok - ${this.name}: ${what}`);
      if (detail !== undefined) console.error(`# ${what}: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`.slice(0, 2000));
    }
    return !!cond;
  }
  done() {
    for (const s of servers) {
      s.kill();
      // Keep the data dir and log of a failed run (and when KEEP_TMP is set) for diagnosis.
      if (!this.failed && !process.env.KEEP_TMP) s.cleanup();
      else console.error(`# server log: ${s.logFile}`);
    }
    process.exit(this.failed ? 1 : 0);
  }
}

const servers = new Set();
process.on('exit', () => { for (const s of servers) s.kill(); });

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Server {
  constructor(args = []) {
    this.args = args;
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sessiond-wstest-'));
    this.dataDir = path.join(this.tmp, 'data');
    this.portFile = path.join(this.tmp, 'port');
    this.logFile = path.join(this.tmp, 'server.log');
    this.admin = 'adm_' + Math.random().toString(16).slice(2) + Math.random().toString(16).slice(2);
    this.proc = null;
  }
  async start() {
    try { fs.unlinkSync(this.portFile); } catch {}
    const bin = process.env.SESSIOND_BIN || path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../build/sessiond');
    const log = fs.openSync(this.logFile, 'a');
    this.proc = spawn(bin, ['--listen', '127.0.0.1:0', '--port-file', this.portFile, '--data-dir', this.dataDir, ...this.args],
      { stdio: ['ignore', log, log], env: { SESSIOND_SANDBOX: 'process', ...process.env, SESSIOND_ADMIN_TOKEN: this.admin } });
    servers.add(this);
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.exited = exited;
    for (let i = 0; i < 400; i++) {
      if (fs.existsSync(this.portFile) && fs.readFileSync(this.portFile, 'utf8').trim()) break;
      if (this.proc.exitCode !== null) throw new Error('server exited at start: ' + this.logTail());
      await sleep(25);
    }
    this.port = parseInt(fs.readFileSync(this.portFile, 'utf8'), 10);
    this.base = `http://127.0.0.1:${this.port}`;
    this.wsBase = `ws://127.0.0.1:${this.port}`;
    return this;
  }
  async stop(signal = 'SIGTERM') {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill(signal);
    await Promise.race([this.exited, sleep(15000)]);
    this.kill();
  }
  kill() {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
      try { this.proc.kill('SIGKILL'); } catch {}
    }
  }
  logTail(n = 30) {
    try { return fs.readFileSync(this.logFile, 'utf8').split('\n').slice(-n).join('\n'); } catch { return ''; }
  }
  /** Remove the temp dir, after unmounting the workspaces' disks (sandbox/wsdisk.h), which stay
   * mounted after the server. */
  cleanup() {
    let mounts = '';
    try { mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8'); } catch { /* none */ }
    for (const m of mounts.split('\n').map((l) => l.split(' ')[4])
      .filter((x) => x && x.startsWith(`${this.tmp}/`)).sort().reverse()) {
      spawnSync('umount', ['-l', m]);
    }
    fs.rmSync(this.tmp, { recursive: true, force: true });
  }
}

export async function startServer(args = []) {
  return new Server(args).start();
}

/** REST call; returns {status, body}. token defaults to the admin token. */
export async function api(srv, method, p, body, token) {
  const headers = { Authorization: `Bearer ${token || srv.admin}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(srv.base + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, body: json, text };
}

export async function makeToken(srv, user, role = 'user', name) {
  const r = await api(srv, 'POST', '/v1/tokens', { user_id: user, name: name || user, role });
  if (r.status !== 201 && r.status !== 200) throw new Error('token: ' + r.text);
  return r.body.token;
}

export async function newSession(srv, token, extra = {}) {
  const r = await api(srv, 'POST', '/v1/sessions', { title: 'ws test', ...extra }, token);
  if (r.status !== 201) throw new Error('session: ' + r.text);
  return r.body.id;
}

export async function postMessage(srv, sid, content, token) {
  for (let i = 0; ; i++) {
    const r = await api(srv, 'POST', `/v1/sessions/${sid}/messages`, { content, run: false }, token);
    if (r.status === 202 || i >= 5) return r;
    await sleep(20);
  }
}

/** A WebSocket client that records every frame. */
export class Client {
  constructor(url, opts = {}) {
    this.frames = [];
    this.waiters = [];
    this.closeInfo = null;
    this.ws = new WebSocket(url, { headers: opts.headers || {}, origin: opts.origin, maxPayload: 256 * 1024 * 1024, perMessageDeflate: false });
    this.opened = new Promise((resolve) => {
      this.ws.once('open', () => resolve(true));
      this.ws.once('error', (e) => { this.error = e; resolve(false); });
    });
    this.closed = new Promise((resolve) => {
      this.ws.once('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
        this._poke();
      });
    });
    this.ws.on('message', (data, isBinary) => {
      let f;
      try { f = JSON.parse(data.toString()); } catch { f = { type: '(unparsable)', raw: data.toString().slice(0, 200), isBinary }; }
      this.frames.push(f);
      this._poke();
    });
  }
  _poke() {
    const w = this.waiters;
    this.waiters = [];
    for (const fn of w) fn();
  }
  /** Resolve with the first recorded frame (from index `from`) matching pred, or null on timeout/close. */
  async next(pred = () => true, timeout = 5000, from = 0) {
    const end = Date.now() + timeout;
    for (;;) {
      for (let i = from; i < this.frames.length; i++) if (pred(this.frames[i])) return this.frames[i];
      if (this.closeInfo || Date.now() >= end) return null;
      await new Promise((r) => { this.waiters.push(r); setTimeout(r, Math.max(1, Math.min(200, end - Date.now()))); });
    }
  }
  /** Every event delivered so far, in order (event and events frames flattened). */
  events() {
    const out = [];
    for (const f of this.frames) {
      if (f.type === 'event') out.push(f.event);
      else if (f.type === 'events') out.push(...f.events);
    }
    return out;
  }
  lastSeq() {
    const ev = this.events();
    return ev.length ? ev[ev.length - 1].seq : 0;
  }
  /** Wait until an event with seq >= n arrived (or timeout). */
  async waitSeq(n, timeout = 10000) {
    const end = Date.now() + timeout;
    while (this.lastSeq() < n && !this.closeInfo && Date.now() < end) {
      await new Promise((r) => { this.waiters.push(r); setTimeout(r, 100); });
    }
    return this.lastSeq() >= n;
  }
  send(obj) {
    this.ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj));
  }
  close() {
    try { this.ws.close(); } catch {}
    return this.closed;
  }
}

/** Connect to a session's WebSocket. opts: token (default admin; null = none), after, query,
 * origin, headers. Resolves once open (or failed: c.error). */
export async function connect(srv, sid, opts = {}) {
  const q = new URLSearchParams(opts.query || {});
  if (opts.after !== undefined) q.set('after', String(opts.after));
  const headers = { ...(opts.headers || {}) };
  const token = opts.token === undefined ? srv.admin : opts.token;
  if (token) headers.Authorization = `Bearer ${token}`;
  const qs = q.toString();
  const c = new Client(`${srv.wsBase}/v1/sessions/${sid}/ws${qs ? '?' + qs : ''}`, { headers, origin: opts.origin });
  await c.opened;
  return c;
}

/** True if seqs are exactly from..to, strictly increasing. */
export function contiguous(seqs, from, to) {
  if (seqs.length !== to - from + 1) return false;
  for (let i = 0; i < seqs.length; i++) if (seqs[i] !== from + i) return false;
  return true;
}
