// test_slack.mjs - POST /v1/slack/events against the real server, with requests signed here
// with a real HMAC-SHA256, and a local HTTP server standing in for Slack's Web API that
// records (and checks) every call the server makes.
import crypto from 'node:crypto';
import http from 'node:http';
import { Tap, Server, api, sleep } from './wslib.mjs';

const t = new Tap('test_slack');
const SECRET = 'test-signing-secret-' + crypto.randomBytes(8).toString('hex');
const BOT = 'xoxb-test-' + crypto.randomBytes(6).toString('hex');

// ---- the fake Slack Web API -----------------------------------------------------------------
const calls = [];
let throttleNextPost = 0; // answer this many chat.postMessage calls with 429 first
let throttleThread = null; // ... only in this thread
let classifierMode = 'api'; // what the fake classifier answers ('error': HTTP 500)
const fake = http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    if (req.url === '/v1/chat/completions') {
      // the optional OpenAI-compatible classifier
      let q = {};
      try {
        q = JSON.parse(body);
      } catch {}
      calls.push({ method: 'classifier', args: q, auth: req.headers.authorization, at: Date.now() });
      if (classifierMode === 'error') {
        res.writeHead(500, { 'Content-Type': 'application/json' });
        return res.end('{"error":"boom"}');
      }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      return res.end(JSON.stringify({ choices: [{ message: { role: 'assistant', content: classifierMode } }] }));
    }
    const method = req.url.replace(/^\/api\//, '').split('?')[0];
    let args = {};
    const ct = req.headers['content-type'] || '';
    try {
      args = ct.startsWith('application/json') ? JSON.parse(body || '{}') : Object.fromEntries(new URLSearchParams(body));
    } catch {
      args = { unparsable: body };
    }
    const call = { method, args, auth: req.headers.authorization, ct, at: Date.now() };
    calls.push(call);
    const send = (status, obj, headers = {}) => {
      res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
      res.end(JSON.stringify(obj));
    };
    if (req.headers.authorization !== `Bearer ${BOT}`) return send(200, { ok: false, error: 'invalid_auth' });
    switch (method) {
      case 'chat.postMessage':
        if (throttleNextPost > 0 && args.thread_ts === throttleThread) {
          throttleNextPost--;
          call.throttled = true;
          return send(429, { ok: false, error: 'ratelimited' }, { 'Retry-After': '1' });
        }
        return send(200, { ok: true, channel: args.channel, ts: `${Date.now() / 1000}` });
      case 'users.info':
        return send(200, { ok: true, user: { id: args.user, name: 'alice', real_name: 'Alice Example', profile: { real_name: 'Alice Example', email: 'alice@example.com' } } });
      case 'conversations.info':
        return send(200, { ok: true, channel: { id: args.channel, name: args.channel === 'CWEB' ? 'team-frontend' : 'general' } });
      case 'conversations.replies':
        return send(200, { ok: true, messages: [{ ts: args.ts, text: 'earlier message in the thread' }] });
      default:
        return send(200, { ok: false, error: 'unknown_method' });
    }
  });
});
await new Promise((r) => fake.listen(0, '127.0.0.1', r));
const fakeBase = `http://127.0.0.1:${fake.address().port}/api`;

// ---- helpers ----------------------------------------------------------------------------------
function sign(body, ts, secret = SECRET) {
  const mac = crypto.createHmac('sha256', secret).update(`v0:${ts}:${body}`).digest('hex');
  return `v0=${mac}`;
}

async function slackPost(srv, payload, { ts = Math.floor(Date.now() / 1000), sig, headers = {}, raw } = {}) {
  const body = raw !== undefined ? raw : JSON.stringify(payload);
  const h = { 'Content-Type': 'application/json', ...headers };
  if (ts !== null) h['X-Slack-Request-Timestamp'] = String(ts);
  if (sig !== null) h['X-Slack-Signature'] = sig || sign(body, ts);
  const t0 = performance.now();
  const r = await fetch(`${srv.base}/v1/slack/events`, { method: 'POST', headers: h, body });
  const text = await r.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: r.status, body: json, text, ms: performance.now() - t0 };
}

let evn = 0;
function mention(text, { channel = 'CWEB', thread_ts, user = 'U123', event_id } = {}) {
  evn++;
  const ts = `1700000${String(evn).padStart(3, '0')}.000100`;
  return {
    token: 'legacy', team_id: 'T1', api_app_id: 'A1', type: 'event_callback',
    event_id: event_id || `Ev${crypto.randomBytes(5).toString('hex')}`, event_time: Math.floor(Date.now() / 1000),
    authorizations: [{ user_id: 'UBOT', is_bot: true }],
    event: { type: 'app_mention', user, text, ts, channel, event_ts: ts, ...(thread_ts ? { thread_ts } : {}) },
  };
}

async function waitFor(fn, ms = 15000, step = 50) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) return null;
    await sleep(step);
  }
}
const posts = () => calls.filter((c) => c.method === 'chat.postMessage' && !c.throttled);

async function sessionsWith(srv, repo) {
  const r = await api(srv, 'GET', '/v1/sessions?limit=100');
  return (r.body && r.body.sessions ? r.body.sessions : []).filter((s) => !repo || s.repo === repo);
}

// ---- 1. without a signing secret: 503 ---------------------------------------------------------
{
  delete process.env.SESSIOND_SLACK_SIGNING_SECRET;
  const srv = await new Server().start();
  const r = await slackPost(srv, { type: 'url_verification', challenge: 'x' });
  t.ok('no signing secret: 503 with a clear message', r.status === 503 && /signing_secret/.test(r.text), r);
  await srv.stop();
}

// ---- the configured server ---------------------------------------------------------------------
process.env.SESSIOND_SLACK_SIGNING_SECRET = SECRET;
process.env.SESSIOND_SLACK_BOT_TOKEN = BOT;
process.env.SESSIOND_SLACK_API_BASE = fakeBase;
process.env.SESSIOND_SLACK_REPOS =
  'webapp:frontend;react;css;login page|The customer web application,api:backend;billing;database|REST API for accounts and invoices';
const srv = await new Server(['--public-url', 'https://sessiond.example.com']).start();

// ---- 2. url_verification -------------------------------------------------------------------
{
  const r = await slackPost(srv, { token: 'x', type: 'url_verification', challenge: 'chal-123' });
  t.ok('url_verification echoes the challenge', r.status === 200 && r.body && r.body.challenge === 'chal-123', r);
}

// ---- 3. bad, stale, missing signatures: 401 and nothing happens ------------------------------
{
  const before = calls.length;
  const p = mention('<@UBOT> fix the login page css');
  const body = JSON.stringify(p);
  const now = Math.floor(Date.now() / 1000);
  const bad = await slackPost(srv, p, { sig: sign(body, now, 'wrong-secret') });
  t.ok('wrong secret: 401', bad.status === 401, bad);
  const old = await slackPost(srv, p, { ts: now - 400 });
  t.ok('timestamp older than 5 minutes: 401', old.status === 401, old);
  const future = await slackPost(srv, p, { ts: now + 400 });
  t.ok('timestamp 6+ minutes in the future: 401', future.status === 401, future);
  const nosig = await slackPost(srv, p, { sig: null });
  t.ok('missing signature: 401', nosig.status === 401, nosig);
  const nots = await slackPost(srv, p, { ts: null, sig: sign(body, now) });
  t.ok('missing timestamp: 401', nots.status === 401, nots);
  const tampered = await slackPost(srv, p, { raw: body.replace('login', 'logout'), sig: sign(body, now), ts: now });
  t.ok('tampered body: 401', tampered.status === 401, tampered);
  const badver = await slackPost(srv, p, { sig: sign(body, now).replace('v0=', 'v1=') });
  t.ok('unknown signature version: 401', badver.status === 401, badver);
  await sleep(500);
  t.ok('refused requests call nothing and create nothing', calls.length === before && (await sessionsWith(srv)).length === 0,
    { calls: calls.slice(before) });
}

// ---- 4. app_mention: answered at once, session started in the right repository --------------
const first = mention('<@UBOT> please make the login page CSS responsive');
let sid = null;
{
  const r = await slackPost(srv, first);
  t.ok('event_callback answered 200', r.status === 200, r);
  t.ok(`event_callback answered well inside Slack's 3 s (${r.ms.toFixed(1)} ms)`, r.ms < 1000, r.ms);
  const start = await waitFor(() => posts().find((c) => /Starting work in `webapp`/.test(c.args.text || '')));
  t.ok('posts "Starting work in `webapp`…" (channel + hints scoring)', !!start, posts());
  t.ok('reply goes in the thread of the mention', start && start.args.thread_ts === first.event.ts && start.args.channel === 'CWEB', start);
  t.ok('Web API called with the bot token, JSON body', start && start.auth === `Bearer ${BOT}` && /application\/json/.test(start.ct), start);
  t.ok('users.info asked for the author', calls.some((c) => c.method === 'users.info' && c.args.user === 'U123'));
  const ss = await sessionsWith(srv, 'webapp');
  t.ok('one session created in webapp', ss.length === 1, ss);
  sid = ss[0] && ss[0].id;
  const msgs = sid ? await api(srv, 'GET', `/v1/sessions/${sid}/messages`) : { body: null };
  const list = (msgs.body && (msgs.body.messages || msgs.body)) || [];
  const m = Array.isArray(list) ? list.find((x) => x.role === 'user') : null;
  const authorId = m && ((m.author && m.author.id) || m.author_id);
  const authorName = m && ((m.author && m.author.name) || m.author_name);
  t.ok('prompt forwarded without the mention', m && m.content === 'please make the login page CSS responsive', m);
  t.ok('the Slack user is the author (slack:U123, real name)', authorId === 'slack:U123' && authorName === 'Alice Example', m);
}

// ---- 5. retries are de-duplicated by event_id -----------------------------------------------
{
  const nPosts = posts().length;
  const r1 = await slackPost(srv, first, { headers: { 'X-Slack-Retry-Num': '1', 'X-Slack-Retry-Reason': 'http_timeout' } });
  const r2 = await slackPost(srv, first, { headers: { 'X-Slack-Retry-Num': '2', 'X-Slack-Retry-Reason': 'http_timeout' } });
  t.ok('retries answered 200', r1.status === 200 && r2.status === 200, [r1, r2]);
  await sleep(1500);
  const ss = await sessionsWith(srv);
  const ev = sid ? await api(srv, 'GET', `/v1/sessions/${sid}/events?after=0&limit=1000`) : { body: {} };
  const nMsg = ((ev.body && ev.body.events) || []).filter((e) => e.type === 'message' && e.data && e.data.role === 'user').length;
  t.ok('retries create no session, message or Slack post', ss.length === 1 && nMsg === 1 && posts().filter((c) => /Starting work/.test(c.args.text || '')).length === 1,
    { sessions: ss.length, nMsg, posts: posts().length - nPosts });
}

// ---- 6. the result is posted with Block Kit when the prompt finishes -------------------------
{
  const res = await waitFor(() => posts().find((c) => Array.isArray(c.args.blocks) && c.args.thread_ts === first.event.ts), 30000, 100);
  t.ok('result posted in the thread with blocks when the prompt ended', !!res, posts().map((c) => c.args.text));
  if (res) {
    const txt = JSON.stringify(res.args.blocks);
    t.ok('blocks: header names the repository and a state', /webapp/.test(txt) && /(Done|Failed|Cancelled)/.test(txt), res.args.blocks);
    const actions = res.args.blocks.find((b) => b.type === 'actions');
    const btn = actions && actions.elements.find((e) => e.action_id === 'open_session');
    t.ok('blocks: "Open session" links to the web UI', btn && btn.url === `https://sessiond.example.com/#/s/${sid}`, actions);
  }
}

// ---- 6b. a Slack prompt never goes back through our own HTTP port ---------------------------
// The integration creates the session and the message in process (server/ops.h) and learns the
// result from the session's events: the request log shows none of the calls a loopback client
// would make (this test never POSTs sessions or messages itself, nor reads events 500 at a
// time), and no token exists for the integration.
{
  const reqs = srv.logTail(1e9).split('\n').flatMap((l) => { try { return [JSON.parse(l)]; } catch { return []; } })
    .filter((l) => l.msg === 'http: request' && typeof l.path === 'string');
  const self = reqs.filter((l) => (l.method === 'POST' && /^\/v1\/sessions(\/[^/]+\/messages)?$/.test(l.path)) ||
    (l.method === 'GET' && /^\/v1\/sessions\/[^/]+(\/events\?after=\d+&limit=500)?$/.test(l.path)));
  t.ok('request log has lines (request_log on)', reqs.some((l) => l.path === '/v1/slack/events'), reqs.length);
  t.ok('no HTTP request from the server to itself for a Slack prompt', self.length === 0, self.slice(0, 5));
  const tk = await api(srv, 'GET', '/v1/tokens');
  const list = Array.isArray(tk.body) ? tk.body : (tk.body && tk.body.tokens) || [];
  t.ok('GET /v1/tokens answered', tk.status === 200, tk);
  t.ok('no token exists for the Slack integration', !list.some((x) => /^slack:/.test(x.user_id || '') || x.role === 'bot'), list);
}

// ---- 7. a reply in the same thread continues the session -------------------------------------
{
  const nStart = posts().filter((c) => /Starting work/.test(c.args.text || '')).length;
  const reply = mention('<@UBOT> also check the footer', { thread_ts: first.event.ts });
  const r = await slackPost(srv, reply);
  t.ok('thread reply answered 200', r.status === 200, r);
  const got = await waitFor(async () => {
    const ev = await api(srv, 'GET', `/v1/sessions/${sid}/events?after=0&limit=1000`);
    return ((ev.body && ev.body.events) || []).find((e) => e.type === 'message' && e.data && e.data.content === 'also check the footer');
  });
  t.ok('thread reply forwarded to the same session', !!got);
  t.ok('no new session and no second "Starting work"', (await sessionsWith(srv)).length === 1 &&
    posts().filter((c) => /Starting work/.test(c.args.text || '')).length === nStart);
}

// ---- 8. unknown repository: ask in the thread; the answer starts the original request ---------
{
  const q = mention('<@UBOT> what does the weekly report say', { channel: 'CGEN' });
  await slackPost(srv, q);
  const ask = await waitFor(() => posts().find((c) => c.args.thread_ts === q.event.ts && /Which repository/.test(c.args.text || '')));
  t.ok('no repository matched: asks which repository in the thread', !!ask, posts().map((c) => c.args.text));
  t.ok('the question lists the repositories', ask && /webapp/.test(ask.args.text) && /api/.test(ask.args.text), ask && ask.args.text);
  t.ok('no session started for an unknown repository', (await sessionsWith(srv)).length === 1);
  const ans = mention('<@UBOT> api', { channel: 'CGEN', thread_ts: q.event.ts });
  await slackPost(srv, ans);
  const start = await waitFor(() => posts().find((c) => c.args.thread_ts === q.event.ts && /Starting work in `api`/.test(c.args.text || '')));
  t.ok('the reply naming the repository starts the session there', !!start, posts().map((c) => c.args.text));
  const ss = await waitFor(async () => { const s = await sessionsWith(srv, 'api'); return s.length ? s : null; });
  let content = null;
  if (ss) {
    const ev = await api(srv, 'GET', `/v1/sessions/${ss[0].id}/events?after=0&limit=100`);
    const m = ((ev.body && ev.body.events) || []).find((e) => e.type === 'message');
    content = m && m.data.content;
  }
  t.ok('with the original request as the prompt', content === 'what does the weekly report say', content);
}

// ---- 9. 429 Retry-After is honoured ---------------------------------------------------------------
{
  const p = mention('<@UBOT> the billing database migration is slow', { channel: 'CGEN' });
  throttleNextPost = 1;
  throttleThread = p.event.ts;
  await slackPost(srv, p);
  const ok = await waitFor(() => posts().find((c) => c.args.thread_ts === p.event.ts && /Starting work in `api`/.test(c.args.text || '')));
  const thr = calls.find((c) => c.throttled && c.args.thread_ts === p.event.ts);
  t.ok('a 429 is retried', !!ok && !!thr, calls.filter((c) => c.method === 'chat.postMessage').map((c) => [c.args.text, c.throttled]));
  t.ok(`... after Retry-After (waited ${ok && thr ? ok.at - thr.at : '?'} ms >= 1000)`, ok && thr && ok.at - thr.at >= 950);
}

// ---- 9b. a result pending when the server dies is still posted after the restart -----------
{
  const p = mention('<@UBOT> sleep 3; echo survived-restart', { thread_ts: first.event.ts });
  await slackPost(srv, p);
  const started = await waitFor(async () => {
    const ev = await api(srv, 'GET', `/v1/sessions/${sid}/events?after=0&limit=1000`);
    const evs = (ev.body && ev.body.events) || [];
    const m = evs.find((e) => e.type === 'message' && e.data && /survived-restart/.test(e.data.content || ''));
    return m && evs.find((e) => e.type === 'prompt.started' && e.data.prompt_id === m.data.prompt_id) ? m : null;
  });
  t.ok('prompt running before the crash', !!started);
  await srv.stop('SIGKILL');
  const t0 = Date.now();
  await srv.start();
  const res = await waitFor(() => posts().find((c) => c.at > t0 && Array.isArray(c.args.blocks) && c.args.thread_ts === first.event.ts), 20000, 100);
  t.ok('after a SIGKILL and restart the pending result is posted in the thread', !!res, posts().filter((c) => c.at > t0).map((c) => c.args.text));
}

// ---- 10. repositories from the repository registry win over the configured list ------------
{
  const cr = await api(srv, 'POST', '/v1/repos', { name: 'billing-svc', url: 'https://git.invalid/billing.git',
    description: 'Invoices, payment runs and dunning', hints: ['invoices', 'dunning', 'payment run'] });
  t.ok('repository registered (POST /v1/repos)', cr.status === 201 || cr.status === 200, cr.body);
  const p = mention('<@UBOT> the dunning emails go out twice', { channel: 'CGEN' });
  await slackPost(srv, p);
  const ok = await waitFor(() => posts().find((c) => c.args.thread_ts === p.event.ts && /Starting work in `billing-svc`/.test(c.args.text || '')));
  t.ok('a registered repository is chosen by its hints', !!ok, posts().filter((c) => c.args.thread_ts === p.event.ts).map((c) => c.args.text));
}

// ---- 11. no secret in the log ----------------------------------------------------------------------
{
  await srv.stop();
  const log = srv.logTail(100000);
  t.ok('signing secret and bot token never logged', !log.includes(SECRET) && !log.includes(BOT));
}

// ---- 12. the optional LLM classifier, and the fallback to hints on any error -------------------
{
  process.env.SESSIOND_SLACK_CLASSIFIER_URL = `http://127.0.0.1:${fake.address().port}/v1/chat/completions`;
  process.env.SESSIOND_SLACK_CLASSIFIER_KEY = 'sk-test-classifier';
  const srv2 = await new Server().start();
  classifierMode = 'api';
  const p = mention('<@UBOT> the react login page is slow', { channel: 'CWEB' }); // hints say webapp
  await slackPost(srv2, p);
  const got = await waitFor(() => posts().find((c) => c.args.thread_ts === p.event.ts && /Starting work/.test(c.args.text || '')));
  const cl = calls.filter((c) => c.method === 'classifier');
  t.ok('classifier asked with the repositories and the message', cl.length >= 1 && JSON.stringify(cl[0].args.messages).includes('webapp') &&
    JSON.stringify(cl[0].args.messages).includes('react login page') && cl[0].auth === 'Bearer sk-test-classifier', cl[0]);
  t.ok('the classifier\'s answer picks the repository', got && /`api`/.test(got.args.text), got && got.args.text);
  classifierMode = 'error';
  const p2 = mention('<@UBOT> the react login page is slow again', { channel: 'CWEB' });
  await slackPost(srv2, p2);
  const got2 = await waitFor(() => posts().find((c) => c.args.thread_ts === p2.event.ts && /Starting work/.test(c.args.text || '')));
  t.ok('classifier error: falls back to the hints', got2 && /`webapp`/.test(got2.args.text), got2 && got2.args.text);
  classifierMode = 'no idea, sorry';
  const p3 = mention('<@UBOT> css of the login page', { channel: 'CWEB' });
  await slackPost(srv2, p3);
  const got3 = await waitFor(() => posts().find((c) => c.args.thread_ts === p3.event.ts && /Starting work/.test(c.args.text || '')));
  t.ok('classifier answer that names no repository: falls back to the hints', got3 && /`webapp`/.test(got3.args.text), got3 && got3.args.text);
  await srv2.stop();
  t.ok('classifier key never logged', !srv2.logTail(100000).includes('sk-test-classifier'));
}
fake.close();
t.done();
