// test_slack_pr.mjs - the Slack thread that started a session hears about its pull request:
// a line when sessiond opens it (after the prompt's result, which keeps its buttons) and a line
// when it is merged. Real server, fake_github.mjs (app JWTs verified, git over HTTP, pull
// requests kept) and a local stand-in for Slack's Web API.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { Tap, Server, api, sleep } from './wslib.mjs';

const t = new Tap('test_slack_pr');
const SECRET = 'test-signing-secret-' + crypto.randomBytes(8).toString('hex');
const BOT = 'xoxb-test-' + crypto.randomBytes(6).toString('hex');
const here = path.dirname(new URL(import.meta.url).pathname);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sessiond-slackpr-'));

// ---- a repository on the fake GitHub, and the app's key ----
const G = ['-c', 'user.name=Seed', '-c', 'user.email=seed@example.com', '-c', 'init.defaultBranch=main'];
fs.mkdirSync(path.join(tmp, 'git/octo'), { recursive: true });
execFileSync('git', [...G, 'init', '-q', '--bare', path.join(tmp, 'git/octo/hello.git')]);
execFileSync('git', [...G, 'init', '-q', path.join(tmp, 'seed')]);
fs.writeFileSync(path.join(tmp, 'seed/README'), 'hello\n');
execFileSync('git', [...G, '-C', path.join(tmp, 'seed'), 'add', '-A']);
execFileSync('git', [...G, '-C', path.join(tmp, 'seed'), 'commit', '-qm', 'init']);
execFileSync('git', [...G, '-C', path.join(tmp, 'seed'), 'push', '-q', path.join(tmp, 'git/octo/hello.git'), 'main']);
const pem = path.join(tmp, 'app.pem');
const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
fs.writeFileSync(pem, privateKey.export({ type: 'pkcs1', format: 'pem' }), { mode: 0o600 });
fs.writeFileSync(path.join(tmp, 'app.pub'), publicKey.export({ type: 'spki', format: 'pem' }));

const gh = spawn('node', [path.join(here, 'fake_github.mjs'), '--port-file', path.join(tmp, 'fake.port'),
  '--public-key', path.join(tmp, 'app.pub'), '--app-id', '4242', '--git-root', path.join(tmp, 'git'),
  '--installed', 'octo=77'], { stdio: ['ignore', 'ignore', 'inherit'] });
for (let i = 0; i < 200 && !(fs.existsSync(path.join(tmp, 'fake.port')) && fs.readFileSync(path.join(tmp, 'fake.port'), 'utf8')); i++) await sleep(25);
const FAKE = `http://127.0.0.1:${fs.readFileSync(path.join(tmp, 'fake.port'), 'utf8').trim()}`;

// ---- the fake Slack Web API ----
const calls = [];
const slack = http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    const method = req.url.replace(/^\/api\//, '').split('?')[0];
    let args = {};
    try {
      args = (req.headers['content-type'] || '').startsWith('application/json') ? JSON.parse(body || '{}') : Object.fromEntries(new URLSearchParams(body));
    } catch {}
    calls.push({ method, args, at: Date.now() });
    const send = (obj) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(obj));
    };
    if (req.headers.authorization !== `Bearer ${BOT}`) return send({ ok: false, error: 'invalid_auth' });
    if (method === 'chat.postMessage') return send({ ok: true, channel: args.channel, ts: `${Date.now() / 1000}` });
    if (method === 'users.info') return send({ ok: true, user: { id: args.user, name: 'alice', real_name: 'Alice Example', profile: { real_name: 'Alice Example', email: 'alice@example.com' } } });
    if (method === 'conversations.info') return send({ ok: true, channel: { id: args.channel, name: 'hello' } });
    if (method === 'conversations.replies') return send({ ok: true, messages: [] });
    return send({ ok: false, error: 'unknown_method' });
  });
});
await new Promise((r) => slack.listen(0, '127.0.0.1', r));

function sign(body, ts) {
  return 'v0=' + crypto.createHmac('sha256', SECRET).update(`v0:${ts}:${body}`).digest('hex');
}
async function slackPost(srv, payload) {
  const body = JSON.stringify(payload);
  const ts = Math.floor(Date.now() / 1000);
  const r = await fetch(`${srv.base}/v1/slack/events`, { method: 'POST', body,
    headers: { 'Content-Type': 'application/json', 'X-Slack-Request-Timestamp': String(ts), 'X-Slack-Signature': sign(body, ts) } });
  return r.status;
}
let evn = 0;
function mention(text, thread_ts) {
  evn++;
  const ts = `1700001${String(evn).padStart(3, '0')}.000100`;
  return { type: 'event_callback', team_id: 'T1', api_app_id: 'A1', event_id: `Ev${crypto.randomBytes(5).toString('hex')}`,
    event_time: Math.floor(Date.now() / 1000), authorizations: [{ user_id: 'UBOT', is_bot: true }],
    event: { type: 'app_mention', user: 'U123', text, ts, channel: 'CHELLO', event_ts: ts, ...(thread_ts ? { thread_ts } : {}) } };
}
async function waitFor(fn, ms = 30000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v || Date.now() > end) return v;
    await sleep(50);
  }
}
const posts = (ts) => calls.filter((c) => c.method === 'chat.postMessage' && c.args.thread_ts === ts);

process.env.SESSIOND_SLACK_SIGNING_SECRET = SECRET;
process.env.SESSIOND_SLACK_BOT_TOKEN = BOT;
process.env.SESSIOND_SLACK_API_BASE = `http://127.0.0.1:${slack.address().port}/api`;
const srv = await new Server(['--github-api-base', `${FAKE}/api/v3`, '--github-app-id', '4242',
  '--github-app-key-file', pem, '--repos-tick-ms', '200', '--public-url', 'https://sessiond.example.com']).start();
try {
  const cr = await api(srv, 'POST', '/v1/repos', { name: 'hello', url: `${FAKE}/octo/hello.git`, pool_size: 0,
    image_interval_min: 0, hints: ['greeting'], pr: 'ready' });
  t.ok('repository registered with pr: ready', cr.status === 201 && cr.body.pr === 'ready', cr.body);

  // ---- opened ----
  const first = mention('<@UBOT> echo hi > greeting.txt');
  t.ok('mention accepted', (await slackPost(srv, first)) === 200);
  const root = first.event.ts;
  const opened = await waitFor(() => posts(root).find((c) => /Opened pull request/.test(c.args.text || '')));
  t.ok('the thread gets a line when the pull request is opened', !!opened, posts(root).map((c) => c.args.text));
  t.ok('the line links the pull request', opened && opened.args.text.includes('<https://github.example/octo/hello/pull/1|#1>'), opened && opened.args.text);
  const result = posts(root).find((c) => Array.isArray(c.args.blocks));
  t.ok('the prompt\'s result was posted before it, with its buttons', !!result && result.at <= opened.at &&
    JSON.stringify(result.args.blocks).includes('open_session'), result && result.args.blocks);

  // ---- merged ----
  await fetch(`${FAKE}/_fake/merge`, { method: 'POST', body: JSON.stringify({ owner: 'octo', repo: 'hello', number: 1 }) });
  t.ok('reply in the thread accepted', (await slackPost(srv, mention('<@UBOT> echo more > more.txt', root))) === 200);
  const merged = await waitFor(() => posts(root).find((c) => /was merged/.test(c.args.text || '')));
  t.ok('the thread gets a line when the pull request is merged', !!merged && merged.args.text.includes('|#1>'), posts(root).map((c) => c.args.text));
  t.ok('one line each', posts(root).filter((c) => /Opened pull request|was merged/.test(c.args.text || '')).length === 2);
} finally {
  await srv.stop();
  gh.kill();
  slack.close();
  if (!t.failed) fs.rmSync(tmp, { recursive: true, force: true });
}
t.done();
