// fake_github.mjs - a local stand-in for GitHub for the integration tests: the REST calls a
// GitHub App makes (installation lookup, installation tokens, pull requests) and git's smart
// HTTP (clone, fetch, push through `git http-backend`), on one loopback port, as github.com
// would serve them from api.github.com and github.com.
//
//   node fake_github.mjs --port-file F --public-key app.pub --app-id 4242 --git-root DIR
//        [--installed octo=77,...] [--user-token ghp_x,...] [--public owner,...] [--log FILE]
//
// REST (under /api/v3):
//   GET  /repos/{owner}/{repo}/installation       JWT → {id} (404 if the owner has none)
//   POST /app/installations/{id}/access_tokens    JWT → 201 {token, expires_at}
//   POST /repos/{owner}/{repo}/pulls              Bearer installation or user token → 201
//   GET  /repos/{owner}/{repo}/pulls/{n}          the same → 200 (the stored pull request)
//   PATCH /repos/{owner}/{repo}/pulls/{n}         the same → 200 {title?, body?, state?}
//   POST /graphql (at /api/graphql)               markPullRequestReadyForReview /
//                                                 convertPullRequestToDraft {variables.id}
// Pull requests are kept (one head branch has at most one open pull request, as on GitHub:
// a second POST for it is 422) and checked: head must exist in the repository.
// A JWT must be RS256 over base64url(header).base64url(claims), verify with the app's public
// key (crypto.verify), and have iss = the app id, iat <= now + 30 s, exp > now and
// exp - iat <= 600 s (GitHub's 10 minutes); else 401.
// Git: /{owner}/{repo}.git/... needs Basic auth whose password is a live installation token
// of the owner's installation, or a --user-token; else 401 with WWW-Authenticate (what makes
// libgit2 ask its credential callback). The repositories of a --public owner are readable
// without credentials (clone, fetch), as public repositories are; a push still needs them.
//
// Test knobs: POST /_fake/config {token_life_s, claimed_life_s, revoke_on_pr} — tokens really
// expire after token_life_s (default 3600) and their expires_at says claimed_life_s (default:
// token_life_s); revoke_on_pr: the next pull request revokes the token it came with and
// answers 401; pr_delay_ms: every pull request call waits that long (a slow GitHub).
// GET /_fake/stats → counters; GET /_fake/prs → the pull requests; POST /_fake/merge
// {owner, repo, number} merges one; POST /_fake/status {owner, repo, sha, state} sets the
// combined status GET /repos/{o}/{r}/commits/{sha}/status answers (with a token).
// Every request is a JSON line in --log.
import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { spawn } from 'node:child_process';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const publicKey = crypto.createPublicKey(fs.readFileSync(args['public-key']));
const appId = String(args['app-id']);
const gitRoot = args['git-root'];
const installed = Object.fromEntries((args.installed || 'octo=77').split(',').map((p) => p.split('=')).map(([o, id]) => [o.toLowerCase(), Number(id)]));
const userTokens = new Set((args['user-token'] || '').split(',').filter(Boolean));
const publicOwners = new Set((args.public || '').split(',').filter(Boolean).map((o) => o.toLowerCase()));
const logFile = args.log;

const knobs = { token_life_s: 3600, claimed_life_s: null, revoke_on_pr: false, pr_delay_ms: 0 };
const pulls = []; // {owner, repo, number, title, body, head, base, draft, state, merged, node_id}
const tokens = new Map(); // token -> {installation, expires_ms, revoked}
const stats = { jwt_ok: 0, jwt_bad: 0, tokens_issued: 0, lookups: 0, git_ok: 0, git_app: 0, git_user: 0,
  git_401: 0, git_401_expired: 0, git_401_anonymous: 0, pulls: 0, pulls_401: 0, receive_pack: 0,
  pull_gets: 0, pull_patches: 0, graphql: 0, pulls_422: 0, status_gets: 0 };
let prs = 0;
const comments = []; // {owner, repo, number, body, by}: POST …/issues/{n}/comments (GET /_fake/comments)
const statuses = new Map(); // "owner/repo@sha" -> combined state (POST /_fake/status)

function log(o) {
  if (logFile) fs.appendFileSync(logFile, JSON.stringify(o) + '\n');
}

function b64urlDecode(s) {
  return Buffer.from(s.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
}

// The JWT's problem, or null if it is good.
function jwtProblem(auth) {
  const m = /^Bearer (.+)$/.exec(auth || '');
  if (!m) return 'no bearer JWT';
  const parts = m[1].split('.');
  if (parts.length !== 3) return 'not a JWT';
  let header, claims;
  try {
    header = JSON.parse(b64urlDecode(parts[0]));
    claims = JSON.parse(b64urlDecode(parts[1]));
  } catch {
    return 'undecodable';
  }
  if (header.alg !== 'RS256' || header.typ !== 'JWT') return 'header';
  const ok = crypto.verify('RSA-SHA256', Buffer.from(parts[0] + '.' + parts[1]), publicKey, b64urlDecode(parts[2]));
  if (!ok) return 'signature';
  const now = Math.floor(Date.now() / 1000);
  if (String(claims.iss) !== appId) return 'iss';
  if (!Number.isInteger(claims.iat) || !Number.isInteger(claims.exp)) return 'iat/exp';
  if (claims.iat > now + 30) return 'iat in the future';
  if (claims.exp <= now) return 'expired';
  if (claims.exp - claims.iat > 600) return 'exp too far';
  return null;
}

function send(res, status, obj, headers = {}) {
  res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
  res.end(JSON.stringify(obj));
}

// A live installation token of owner's installation (or a user token): its kind, or why not.
function tokenCheck(token, owner) {
  if (userTokens.has(token)) return { kind: 'user' };
  const t = tokens.get(token);
  if (!t) return { why: 'unknown' };
  if (t.revoked) return { why: 'revoked' };
  if (Date.now() >= t.expires_ms) return { why: 'expired' };
  if (installed[owner.toLowerCase()] !== t.installation) return { why: 'other installation' };
  return { kind: 'app' };
}

function api(req, res, path, body) {
  let m;
  if ((m = /^\/repos\/([^/]+)\/([^/]+)\/installation$/.exec(path)) && req.method === 'GET') {
    const why = jwtProblem(req.headers.authorization);
    log({ api: 'installation', owner: m[1], jwt: why || 'ok' });
    if (why) {
      stats.jwt_bad++;
      return send(res, 401, { message: `A JSON web token could not be decoded (${why})` });
    }
    stats.jwt_ok++;
    stats.lookups++;
    const id = installed[m[1].toLowerCase()];
    return id ? send(res, 200, { id, account: { login: m[1] } }) : send(res, 404, { message: 'Not Found' });
  }
  if ((m = /^\/app\/installations\/(\d+)\/access_tokens$/.exec(path)) && req.method === 'POST') {
    const why = jwtProblem(req.headers.authorization);
    log({ api: 'access_tokens', installation: Number(m[1]), jwt: why || 'ok' });
    if (why) {
      stats.jwt_bad++;
      return send(res, 401, { message: `A JSON web token could not be decoded (${why})` });
    }
    stats.jwt_ok++;
    if (!Object.values(installed).includes(Number(m[1]))) return send(res, 404, { message: 'Not Found' });
    const token = 'ghs_' + crypto.randomBytes(18).toString('hex');
    const now = Date.now();
    const claimed = knobs.claimed_life_s ?? knobs.token_life_s;
    tokens.set(token, { installation: Number(m[1]), expires_ms: now + knobs.token_life_s * 1000 });
    stats.tokens_issued++;
    const expires_at = new Date(now + claimed * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
    return send(res, 201, { token, expires_at });
  }
  if ((m = /^\/repos\/([^/]+)\/([^/]+)\/pulls$/.exec(path)) && req.method === 'POST') {
    const tm = /^Bearer (.+)$/.exec(req.headers.authorization || '');
    const check = tm ? tokenCheck(tm[1], m[1]) : { why: 'none' };
    if (check.kind && knobs.revoke_on_pr) {
      knobs.revoke_on_pr = false;
      if (tokens.has(tm[1])) tokens.get(tm[1]).revoked = true;
      check.kind = undefined;
      check.why = 'revoked';
    }
    log({ api: 'pulls', owner: m[1], repo: m[2], auth: check.kind || check.why, body });
    if (!check.kind) {
      stats.pulls_401++;
      return send(res, 401, { message: 'Bad credentials' });
    }
    let q;
    try {
      q = JSON.parse(body);
    } catch {
      return send(res, 400, { message: 'Problems parsing JSON' });
    }
    if (typeof q.title !== 'string' || typeof q.head !== 'string' || typeof q.base !== 'string') {
      stats.pulls_422++;
      return send(res, 422, { message: 'Validation Failed', errors: [{ message: 'title, head and base are required' }] });
    }
    if (!branchSha(m[1], m[2], q.head)) {
      stats.pulls_422++;
      return send(res, 422, { message: 'Validation Failed', errors: [{ message: `head ${q.head} does not exist` }] });
    }
    if (pulls.some((p) => p.owner === m[1] && p.repo === m[2] && p.head === q.head && p.state === 'open')) {
      stats.pulls_422++;
      return send(res, 422, { message: 'Validation Failed', errors: [{ message: `A pull request already exists for ${m[1]}:${q.head}.` }] });
    }
    stats.pulls++;
    prs++;
    const pr = { owner: m[1], repo: m[2], number: prs, title: q.title, body: q.body ?? null, head: q.head,
      base: q.base, draft: !!q.draft, state: 'open', merged: false, node_id: `PR_node${prs}`, by: check.kind };
    pulls.push(pr);
    return send(res, 201, prJson(pr));
  }
  if ((m = /^\/repos\/([^/]+)\/([^/]+)\/pulls\/(\d+)$/.exec(path)) && (req.method === 'GET' || req.method === 'PATCH')) {
    const tm = /^Bearer (.+)$/.exec(req.headers.authorization || '');
    const check = tm ? tokenCheck(tm[1], m[1]) : { why: 'none' };
    log({ api: req.method === 'GET' ? 'pull_get' : 'pull_patch', owner: m[1], repo: m[2], number: Number(m[3]),
      auth: check.kind || check.why, body });
    if (!check.kind) return send(res, 401, { message: 'Bad credentials' });
    const pr = pulls.find((p) => p.owner === m[1] && p.repo === m[2] && p.number === Number(m[3]));
    if (!pr) return send(res, 404, { message: 'Not Found' });
    if (req.method === 'GET') {
      stats.pull_gets++;
      return send(res, 200, prJson(pr));
    }
    stats.pull_patches++;
    let q;
    try {
      q = JSON.parse(body);
    } catch {
      return send(res, 400, { message: 'Problems parsing JSON' });
    }
    if ('draft' in q) return send(res, 422, { message: 'draft cannot be changed through REST' });
    if (typeof q.title === 'string') pr.title = q.title;
    if (typeof q.body === 'string') pr.body = q.body;
    if (q.state === 'closed' || q.state === 'open') pr.state = q.state;
    return send(res, 200, prJson(pr));
  }
  if ((m = /^\/repos\/([^/]+)\/([^/]+)\/issues\/(\d+)\/comments$/.exec(path)) && req.method === 'POST') {
    const tm = /^Bearer (.+)$/.exec(req.headers.authorization || '');
    const check = tm ? tokenCheck(tm[1], m[1]) : { why: 'none' };
    log({ api: 'comment', owner: m[1], repo: m[2], number: Number(m[3]), auth: check.kind || check.why, body });
    if (!check.kind) return send(res, 401, { message: 'Bad credentials' });
    let q;
    try {
      q = JSON.parse(body);
    } catch {
      return send(res, 400, { message: 'Problems parsing JSON' });
    }
    if (typeof q.body !== 'string' || !q.body) return send(res, 422, { message: 'body is required' });
    if (!pulls.some((p) => p.owner === m[1] && p.repo === m[2] && p.number === Number(m[3]))) return send(res, 404, { message: 'Not Found' });
    comments.push({ owner: m[1], repo: m[2], number: Number(m[3]), body: q.body, by: check.kind });
    return send(res, 201, { id: comments.length, body: q.body });
  }
  if ((m = /^\/repos\/([^/]+)\/([^/]+)\/commits\/([0-9a-f]{40})\/status$/.exec(path)) && req.method === 'GET') {
    const tm = /^Bearer (.+)$/.exec(req.headers.authorization || '');
    const check = tm ? tokenCheck(tm[1], m[1]) : { why: 'none' };
    log({ api: 'status_get', owner: m[1], repo: m[2], sha: m[3], auth: check.kind || check.why });
    if (!check.kind) return send(res, 401, { message: 'Bad credentials' });
    stats.status_gets++;
    const st = statuses.get(`${m[1]}/${m[2]}@${m[3]}`);
    // GitHub answers "pending" with total_count 0 for a commit without any status
    return send(res, 200, { state: st || 'pending', sha: m[3], total_count: st ? 1 : 0,
      statuses: st ? [{ state: st, context: 'ci' }] : [] });
  }
  return send(res, 404, { message: 'Not Found' });
}

// The sha of refs/heads/branch in the bare repository owner/repo.git, or null.
function branchSha(owner, repo, branch) {
  try {
    return fs.readFileSync(`${gitRoot}/${owner}/${repo}.git/refs/heads/${branch}`, 'utf8').trim();
  } catch {
    try {
      const packed = fs.readFileSync(`${gitRoot}/${owner}/${repo}.git/packed-refs`, 'utf8');
      const line = packed.split('\n').find((l) => l.endsWith(` refs/heads/${branch}`));
      return line ? line.split(' ')[0] : null;
    } catch {
      return null;
    }
  }
}

function prJson(pr) {
  return { number: pr.number, node_id: pr.node_id, title: pr.title, body: pr.body, draft: pr.draft,
    state: pr.merged ? 'closed' : pr.state, merged: pr.merged, merged_at: pr.merged ? new Date().toISOString() : null,
    html_url: `https://github.example/${pr.owner}/${pr.repo}/pull/${pr.number}`,
    url: `http://api.example/repos/${pr.owner}/${pr.repo}/pulls/${pr.number}`,
    head: { ref: pr.head, sha: branchSha(pr.owner, pr.repo, pr.head) }, base: { ref: pr.base }, by: pr.by };
}

// GitHub's GraphQL endpoint: the two mutations that change a pull request's draft flag.
function graphql(req, res, body) {
  const tm = /^Bearer (.+)$/.exec(req.headers.authorization || '');
  let q;
  try {
    q = JSON.parse(body);
  } catch {
    return send(res, 400, { message: 'Problems parsing JSON' });
  }
  const pr = pulls.find((p) => p.node_id === q.variables?.id);
  const check = tm && pr ? tokenCheck(tm[1], pr.owner) : { why: tm ? 'unknown node' : 'none' };
  log({ api: 'graphql', query: q.query, id: q.variables?.id, auth: check.kind || check.why });
  if (!tm || (pr && !check.kind)) return send(res, 401, { message: 'Bad credentials' });
  if (!pr) return send(res, 200, { data: null, errors: [{ message: `Could not resolve to a node with the global id of '${q.variables?.id}'` }] });
  stats.graphql++;
  if (/markPullRequestReadyForReview/.test(q.query)) pr.draft = false;
  else if (/convertPullRequestToDraft/.test(q.query)) pr.draft = true;
  else return send(res, 200, { data: null, errors: [{ message: 'unsupported mutation' }] });
  return send(res, 200, { data: { pr: { pullRequest: { isDraft: pr.draft } } } });
}

// git smart HTTP through `git http-backend` (CGI).
function git(req, res, url) {
  const m = /^\/([^/]+)\/([^/]+?\.git)(\/.*)$/.exec(url.pathname);
  if (!m) return send(res, 404, { message: 'Not Found' });
  const [, owner, repo, rest] = m;
  const basic = /^Basic (.+)$/.exec(req.headers.authorization || '');
  let check = { why: 'anonymous' };
  if (basic) {
    const pass = Buffer.from(basic[1], 'base64').toString().split(':').slice(1).join(':');
    check = tokenCheck(pass, owner);
  }
  const read = rest === '/git-upload-pack' || (rest === '/info/refs' && url.searchParams.get('service') === 'git-upload-pack');
  if (!check.kind && read && publicOwners.has(owner.toLowerCase())) check = { kind: 'public' };
  log({ git: rest, query: url.search, host: req.headers.host, auth: check.kind || check.why });
  if (!check.kind) {
    stats.git_401++;
    if (check.why === 'expired' || check.why === 'revoked') stats.git_401_expired++;
    if (check.why === 'anonymous') stats.git_401_anonymous++;
    req.resume();
    res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="fake GitHub"', 'Content-Type': 'text/plain' });
    return res.end('authentication required\n');
  }
  stats.git_ok++;
  if (check.kind !== 'public') stats[check.kind === 'app' ? 'git_app' : 'git_user']++;
  if (rest === '/git-receive-pack') stats.receive_pack++;
  const env = {
    PATH: process.env.PATH,
    GIT_PROJECT_ROOT: gitRoot,
    GIT_HTTP_EXPORT_ALL: '1',
    PATH_INFO: `/${owner}/${repo}${rest}`,
    QUERY_STRING: url.search.replace(/^\?/, ''),
    REQUEST_METHOD: req.method,
    CONTENT_TYPE: req.headers['content-type'] || '',
    REMOTE_USER: 'x-access-token', // enables receive-pack
    REMOTE_ADDR: '127.0.0.1',
    GIT_CONFIG_NOSYSTEM: '1',
    HOME: gitRoot,
  };
  if (req.headers['content-length']) env.CONTENT_LENGTH = req.headers['content-length'];
  if (req.headers['content-encoding']) env.HTTP_CONTENT_ENCODING = req.headers['content-encoding'];
  if (req.headers['git-protocol']) env.GIT_PROTOCOL = req.headers['git-protocol'];
  const cgi = spawn('git', ['http-backend'], { env, stdio: ['pipe', 'pipe', 'inherit'] });
  req.pipe(cgi.stdin);
  let head = Buffer.alloc(0);
  let headersDone = false;
  cgi.stdout.on('data', (chunk) => {
    if (headersDone) return res.write(chunk);
    head = Buffer.concat([head, chunk]);
    let sep = head.indexOf('\r\n\r\n');
    let sepLen = 4;
    if (sep < 0) {
      sep = head.indexOf('\n\n');
      sepLen = 2;
    }
    if (sep < 0) return;
    headersDone = true;
    let status = 200;
    const headers = {};
    for (const line of head.subarray(0, sep).toString().split(/\r?\n/)) {
      const i = line.indexOf(':');
      if (i < 0) continue;
      const k = line.slice(0, i).trim();
      const v = line.slice(i + 1).trim();
      if (k.toLowerCase() === 'status') status = parseInt(v, 10);
      else headers[k] = v;
    }
    res.writeHead(status, headers);
    res.write(head.subarray(sep + sepLen));
  });
  cgi.on('close', () => {
    if (!headersDone) res.writeHead(500);
    res.end();
  });
}

const srv = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://fake');
  if (url.pathname.startsWith('/_fake/')) {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      if (url.pathname === '/_fake/config' && req.method === 'POST') Object.assign(knobs, JSON.parse(body || '{}'));
      if (url.pathname === '/_fake/prs') return send(res, 200, pulls);
      if (url.pathname === '/_fake/comments') return send(res, 200, comments);
      if (url.pathname === '/_fake/merge') {
        const q = JSON.parse(body || '{}');
        const pr = pulls.find((p) => p.owner === q.owner && p.repo === q.repo && p.number === q.number);
        if (pr) pr.merged = true;
        return send(res, pr ? 200 : 404, pr ? prJson(pr) : { message: 'Not Found' });
      }
      if (url.pathname === '/_fake/status') {
        const q = JSON.parse(body || '{}');
        statuses.set(`${q.owner}/${q.repo}@${q.sha}`, q.state);
        return send(res, 200, { ok: true });
      }
      send(res, 200, url.pathname === '/_fake/stats' ? stats : knobs);
    });
    return;
  }
  if (url.pathname.startsWith('/api/v3/')) {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const slow = /\/pulls/.test(url.pathname) ? knobs.pr_delay_ms : 0;
      setTimeout(() => api(req, res, url.pathname.slice(7), body), slow);
    });
    return;
  }
  if (url.pathname === '/api/graphql') {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => graphql(req, res, body));
    return;
  }
  git(req, res, url);
});
srv.listen(0, '127.0.0.1', () => fs.writeFileSync(args['port-file'], String(srv.address().port)));
