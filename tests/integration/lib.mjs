// tests/integration/lib.mjs - helpers for node integration tests (WebSocket, browser, load).
//
//   import { startServer, Tap } from './lib.mjs';
//   const t = new Tap('ws_basic');                  // prints "ok - ws_basic: NAME" lines
//   const srv = await startServer({ args: ['--max-open-sessions', '4'] });
//   const alice = await srv.createToken('alice');   // {token, id, user_id, role, ...}
//   const s = await srv.createSession({ title: 'x' }, alice.token);
//   const r = await srv.api('POST', `/v1/sessions/${s.id}/messages`,
//                           { body: { content: 'hi' }, token: alice.token });
//   t.equal(r.status, 202, 'post a message');
//   await t.test('events are ordered', async () => { ... throw to fail ... });
//   await srv.stop();                               // SIGTERM; resolves to the exit code
//   t.done();                                       // sets the exit code (1 if anything failed)
//
// The server runs $SESSIOND_BIN (default build/sessiond) on 127.0.0.1:0 with a temp data dir;
// its port comes from --port-file. It is SIGKILLed if the test process exits without stop().
// Its stderr (JSON log lines) is kept in srv.logPath; srv.logLines() parses it.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '../..');
export const SESSIOND_BIN = process.env.SESSIOND_BIN || path.join(ROOT, 'build/sessiond');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const live = new Set();
process.on('exit', () => {
  for (const p of live) {
    try { p.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

/** Wait until fn() returns a truthy value (polling every `every` ms) or throw after ms. */
export async function waitFor(fn, { ms = 5000, every = 20, what = 'condition' } = {}) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(every);
  }
}

export class Server {
  constructor(opts = {}) {
    this.args = opts.args || [];
    this.env = opts.env || {};
    this.bin = opts.bin || SESSIOND_BIN;
    this.tmp = opts.tmp || fs.mkdtempSync(path.join(os.tmpdir(), 'sessiond-node-'));
    this.dataDir = opts.dataDir || path.join(this.tmp, 'data');
    this.portFile = path.join(this.tmp, 'port');
    this.logPath = path.join(this.tmp, 'server.log');
    this.proc = null;
    this.port = 0;
    this.base = '';
    this.adminToken = '';
  }

  /** Start (or start again, same data dir). Resolves once /healthz answers. */
  async start() {
    fs.rmSync(this.portFile, { force: true });
    const log = fs.openSync(this.logPath, 'a');
    const args = ['--listen', '127.0.0.1:0', '--port-file', this.portFile,
                  '--data-dir', this.dataDir, ...this.args];
    // The local (bubblewrap) sandbox cannot run everywhere; tests use the process backend
    // unless the caller chose (env SESSIOND_SANDBOX, or opts.env / --sandbox).
    this.proc = spawn(this.bin, args, {
      env: { SESSIOND_SANDBOX: 'process', ...process.env, ...this.env },
      stdio: ['ignore', log, log],
    });
    fs.closeSync(log);
    live.add(this.proc);
    let exited = null;
    this.proc.once('exit', (code, sig) => { exited = { code, sig }; live.delete(this.proc); });
    this.exitPromise = new Promise((r) => this.proc.once('exit', (code, sig) => r(code ?? sig)));
    await waitFor(() => {
      if (exited) throw new Error(`sessiond exited at start (${JSON.stringify(exited)}):\n${this.logTail()}`);
      try { return fs.readFileSync(this.portFile, 'utf8').trim(); } catch { return ''; }
    }, { ms: 10000, what: 'the port file' });
    this.port = Number(fs.readFileSync(this.portFile, 'utf8').trim());
    this.base = `http://127.0.0.1:${this.port}`;
    this.wsBase = `ws://127.0.0.1:${this.port}`;
    this.adminToken = this.env.SESSIOND_ADMIN_TOKEN
      || fs.readFileSync(path.join(this.dataDir, 'admin.token'), 'utf8').trim();
    await waitFor(async () => {
      try { return (await fetch(`${this.base}/healthz`)).ok; } catch { return false; }
    }, { ms: 10000, what: '/healthz' });
    return this;
  }

  /** Stop with a signal (default SIGTERM) and resolve to the exit code (or signal name). */
  async stop(signal = 'SIGTERM') {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) {
      return this.proc ? (this.proc.exitCode ?? this.proc.signalCode) : null;
    }
    this.proc.kill(signal);
    const rc = await this.exitPromise;
    this.proc = null;
    return rc;
  }

  /** Stop (SIGTERM by default, 'SIGKILL' for a crash) and start again on a new port.
   * Resolves to the exit code of the stopped process (also kept in this.lastExit). */
  async restart(signal = 'SIGTERM') {
    this.lastExit = await this.stop(signal);
    await this.start();
    return this.lastExit;
  }

  /** HTTP call. opts: body (object -> JSON, string/Buffer -> raw), token (default admin;
   * null = none), headers, query (object). Resolves to {status, headers, text, json}. */
  async api(method, p, opts = {}) {
    const headers = { ...(opts.headers || {}) };
    const token = opts.token === undefined ? this.adminToken : opts.token;
    if (token) headers.authorization = `Bearer ${token}`;
    let body;
    if (opts.body !== undefined) {
      if (typeof opts.body === 'string' || opts.body instanceof Uint8Array) {
        body = opts.body;
      } else {
        body = JSON.stringify(opts.body);
        headers['content-type'] ??= 'application/json';
      }
    }
    let url = `${this.base}${p}`;
    if (opts.query) url += (p.includes('?') ? '&' : '?') + new URLSearchParams(opts.query);
    const res = await fetch(url, { method, headers, body });
    const buf = Buffer.from(await res.arrayBuffer());
    const text = buf.toString('utf8');
    let json = null;
    if ((res.headers.get('content-type') || '').includes('json')) {
      try { json = JSON.parse(text); } catch { json = null; }
    }
    return { status: res.status, headers: res.headers, text, json, body: buf };
  }

  /** Like api() but throws unless the status is `expect` (default 2xx); returns the JSON. */
  async json(method, p, opts = {}, expect = null) {
    const r = await this.api(method, p, opts);
    const ok = expect === null ? r.status >= 200 && r.status < 300 : r.status === expect;
    if (!ok) throw new Error(`${method} ${p}: HTTP ${r.status}: ${r.text.slice(0, 300)}`);
    return r.json;
  }

  /** Create a token (as admin). role: user | viewer | bot | admin. Returns the JSON with .token. */
  createToken(userId, role = 'user', extra = {}) {
    return this.json('POST', '/v1/tokens',
      { body: { user_id: userId, name: userId, email: `${userId}@example.com`, role, ...extra } }, 201);
  }

  /** Create a session; returns its JSON (.id). */
  createSession(body = {}, token = undefined) {
    return this.json('POST', '/v1/sessions', { body, token }, 201);
  }

  /** Post a message; returns {message_id, prompt_id, seq}. */
  postMessage(sid, content, { token, run = false, ...rest } = {}) {
    return this.json('POST', `/v1/sessions/${sid}/messages`,
      { body: { content, run, ...rest }, token }, 202);
  }

  /** Every event after `after` (pages through ?after=&limit=). */
  async events(sid, { after = 0, token } = {}) {
    const all = [];
    for (;;) {
      const page = await this.json('GET', `/v1/sessions/${sid}/events?after=${after}&limit=1000`, { token });
      all.push(...page.events);
      if (!page.has_more || page.events.length === 0) return all;
      after = page.next_after;
    }
  }

  /** The WebSocket URL of a session (query: {after, ticket, token}). */
  wsUrl(sid, query = {}) {
    const q = new URLSearchParams(query).toString();
    return `${this.wsBase}/v1/sessions/${sid}/ws${q ? `?${q}` : ''}`;
  }

  logText() {
    try { return fs.readFileSync(this.logPath, 'utf8'); } catch { return ''; }
  }

  logTail(n = 30) {
    return this.logText().trim().split('\n').slice(-n).join('\n');
  }

  /** The server's log as parsed JSON objects (unparseable lines are skipped). */
  logLines() {
    return this.logText().split('\n').filter(Boolean).flatMap((l) => {
      try { return [JSON.parse(l)]; } catch { return []; }
    });
  }

  /** Remove the temp dir (call after stop; done() keeps it when a test failed). */
  cleanup() {
    // workspaces with a disk quota are loop mounts (sandbox/wsdisk.h) that a killed server leaves
    let mounts = '';
    try { mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8'); } catch { /* none */ }
    const under = mounts.split('\n').map((l) => l.split(' ')[4])
      .filter((m) => m && m.startsWith(`${this.tmp}/`)).sort().reverse();
    for (const m of under) spawnSync('umount', ['-l', m]);
    fs.rmSync(this.tmp, { recursive: true, force: true });
  }
}

/** Create and start a server: startServer({args, env, bin}). */
export async function startServer(opts = {}) {
  const s = new Server(opts);
  return s.start();
}

/** TAP-ish reporter: "ok - PREFIX: name" / "not ok - PREFIX: name" lines for tests/run.sh. */
export class Tap {
  constructor(prefix) {
    this.prefix = prefix || path.basename(process.argv[1] || 'test').replace(/\.m?js$/, '');
    this.passed = 0;
    this.failed = 0;
    this.servers = [];
  }

  ok(cond, name, diag) {
    if (cond) {
      this.passed++;
      console.log(`ok - ${this.prefix}: ${name}`);
    } else {
      this.failed++;
      console.log(`not ok - ${this.prefix}: ${name}`);
      if (diag !== undefined) {
        console.error(`# ${name}: ${typeof diag === 'string' ? diag : JSON.stringify(diag)}`);
      }
    }
    return !!cond;
  }

  equal(got, want, name) {
    const g = JSON.stringify(got);
    const w = JSON.stringify(want);
    return this.ok(g === w, name, `got ${g?.slice(0, 500)}, want ${w?.slice(0, 500)}`);
  }

  /** Run an async block; an exception (or a timeout, default 30 s) is one failed check. */
  async test(name, fn, { timeoutMs = 30000 } = {}) {
    let timer;
    try {
      await Promise.race([
        fn(),
        new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`timeout ${timeoutMs} ms`)), timeoutMs); }),
      ]);
      this.ok(true, name);
    } catch (e) {
      this.ok(false, name, e && e.stack ? e.stack : String(e));
    } finally {
      clearTimeout(timer);
    }
  }

  /** Track a server: on failure its log tail is printed by done(). */
  track(server) {
    this.servers.push(server);
    return server;
  }

  /** Print the summary diagnostics and set process.exitCode. */
  done() {
    if (this.failed) {
      for (const s of this.servers) {
        console.error(`# server log (${s.logPath}):\n${s.logTail()}`);
      }
    } else {
      for (const s of this.servers) {
        if (!s.proc) s.cleanup();
      }
    }
    process.exitCode = this.failed ? 1 : 0;
    return this.failed === 0;
  }
}
