// test_trust_slack_escape.mjs - the agent's output is posted to Slack as text, never as
// markup: an agent (or a file it cat'ed) printing <!channel>, <!here>, <@U…> or <url|label>
// used to ping the whole channel or show a disguised link in the result message. A local
// HTTP server stands in for Slack's Web API and records what the server posts.
import crypto from 'node:crypto';
import http from 'node:http';
import { Tap, Server, sleep } from './wslib.mjs';

const t = new Tap('test_trust_slack_escape');
const SECRET = 'test-signing-secret-' + crypto.randomBytes(8).toString('hex');
const BOT = 'xoxb-test-' + crypto.randomBytes(6).toString('hex');

const posts = [];
const fake = http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    const method = req.url.replace(/^\/api\//, '').split('?')[0];
    let args = {};
    try {
      args = (req.headers['content-type'] || '').startsWith('application/json')
        ? JSON.parse(body || '{}') : Object.fromEntries(new URLSearchParams(body));
    } catch {}
    if (method === 'chat.postMessage') posts.push(args);
    const out = method === 'users.info'
      ? { ok: true, user: { id: args.user, name: 'mallory', profile: { real_name: 'Mallory' } } }
      : method === 'conversations.info' ? { ok: true, channel: { id: args.channel, name: 'general' } }
      : { ok: true, ts: `${Date.now() / 1000}`, messages: [] };
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(out));
  });
});
await new Promise((r) => fake.listen(0, '127.0.0.1', r));

process.env.SESSIOND_SLACK_SIGNING_SECRET = SECRET;
process.env.SESSIOND_SLACK_BOT_TOKEN = BOT;
process.env.SESSIOND_SLACK_API_BASE = `http://127.0.0.1:${fake.address().port}/api`;
process.env.SESSIOND_SLACK_REPOS = 'webapp:general|The web application';
const srv = await new Server().start();

// Slack sends what a user typed with & < > escaped; the shell agent runs it as a bash script.
// The script prints the markup and ends the agent before its own `done`, so the result's
// summary is the agent's output, as with a real agent whose model was talked into it.
const cmd = "printf '%s\\n' '<!channel> <!here> <@U0ADMIN> <https://evil.example/x|docs> a&b'; kill -KILL $PPID";
const esc = cmd.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const ts = '1700000001.000100';
const payload = {
  type: 'event_callback', team_id: 'T1', event_id: 'Ev' + crypto.randomBytes(5).toString('hex'),
  event_time: Math.floor(Date.now() / 1000),
  event: { type: 'app_mention', user: 'U666', text: `<@UBOT> ${esc}`, ts, channel: 'CGEN', event_ts: ts },
};
const body = JSON.stringify(payload);
const now = Math.floor(Date.now() / 1000);
const sig = 'v0=' + crypto.createHmac('sha256', SECRET).update(`v0:${now}:${body}`).digest('hex');
const r = await fetch(`${srv.base}/v1/slack/events`, {
  method: 'POST', body,
  headers: { 'Content-Type': 'application/json', 'X-Slack-Request-Timestamp': String(now), 'X-Slack-Signature': sig },
});
t.ok('the mention is accepted', r.status === 200, r.status);

let res = null;
for (let i = 0; i < 300 && !res; i++) {
  res = posts.find((p) => Array.isArray(p.blocks) && p.thread_ts === ts);
  if (!res) await sleep(100);
}
t.ok('the result is posted with blocks', !!res, posts);
const texts = res ? res.blocks.filter((b) => b.type === 'section').map((b) => b.text.text) : [];
const all = JSON.stringify(res || {});
const summary = texts.find((s) => s.includes('channel')) || '';
t.ok('the output reached the summary', summary.length > 0, texts);
t.ok('no <!channel> / <!here> markup is posted', !/<!channel>|<!here>/.test(all), texts);
t.ok('no <@U…> user mention is posted', !/<@U0ADMIN>/.test(all), texts);
t.ok('no <url|label> link markup is posted', !/<https:\/\/evil\.example\/x\|docs>/.test(all), texts);
t.ok('the output is shown literally (escaped)', summary.includes('&lt;!channel&gt; &lt;!here&gt; &lt;@U0ADMIN&gt; ' +
  '&lt;https://evil.example/x|docs&gt; a&amp;b'), summary);
await srv.stop();
fake.close();
t.done();
