// app.js - the sessiond web UI: sign-in, session list, live session view.
//
// Plain ES modules, no build step. Routes live in the URL fragment (#/, #/s/<id>), so the
// server only serves "/" and /ui/*. Every string from the server is rendered as text
// (render.js), and the page runs under a strict CSP without inline script.
// Embedded mode (?embed=1, the extension's side panel) accepts a token and DOM-selection
// context from its parent frame through postMessage.

import * as API from './api.js';
import { SessionStream } from './stream.js';
import { h, clear, timeAgo, clock, avatar, diffView, linkify, safeURL } from './render.js';
import { changesPanel } from './changes.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const toastEl = document.getElementById('toast');
const params = new URLSearchParams(location.search);
const embedded = params.get('embed') === '1';
if (embedded) document.body.classList.add('embed');

let current = null; // the mounted view: { destroy() }
let afterSignin = '#/'; // where the sign-in page leads
// for tests and debugging: navigation, the pending DOM context, the seqs delivered
window.sessiond = { go, safeURL, seen: [], get pendingContext() { return pendingContext; } };
let meInfo = null;
let pendingContext = null; // DOM selection handed over by the extension
const contextListeners = new Set();

function toast(msg, kind = '') {
  toastEl.className = `show ${kind}`;
  toastEl.textContent = msg;
  clearTimeout(toast.t);
  toast.t = setTimeout(() => (toastEl.className = ''), 4000);
}

function go(hash) {
  if (location.hash !== hash) location.hash = hash;
  else route();
}

// ---------------------------------------------------------------------------------------------
// sign-in

function renderNav() {
  clear(nav);
  if (meInfo) {
    nav.append(
      h('span', { class: 'me', title: meInfo.email || '' }, meInfo.name || meInfo.user_id),
      h('button', { class: 'link', type: 'button', onclick: () => { API.setToken(null); meInfo = null; go('#/signin'); } }, 'Sign out'),
    );
  }
}

function signinView() {
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'current-password', required: true, spellcheck: 'false' });
  const err = h('p', { class: 'error', role: 'alert' });
  const form = h('form', { class: 'card signin', 'aria-labelledby': 'signin-h' },
    h('h1', { id: 'signin-h' }, 'Sign in'),
    h('p', { class: 'muted' }, 'Paste an API token (create one with POST /v1/tokens, or use the admin token).'),
    h('label', { for: 'token' }, 'API token'),
    input,
    err,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.textContent = '';
    try {
      API.setToken(input.value.trim());
      meInfo = await API.me();
      renderNav();
      go(afterSignin);
    } catch (ex) {
      API.setToken(null);
      err.textContent = ex.status === 401 ? 'That token was not accepted.' : `Sign-in failed: ${ex.message}`;
    }
  });
  clear(main).append(form);
  input.focus();
  return { destroy() {} };
}

// ---------------------------------------------------------------------------------------------
// session list

function listView() {
  const tbody = h('tbody');
  const more = h('button', { type: 'button', class: 'link', hidden: true }, 'Load more');
  const repoSel = h('input', { id: 'new-repo', name: 'repo', list: 'repo-list', placeholder: 'repository name', autocomplete: 'off' });
  const datalist = h('datalist', { id: 'repo-list' });
  const title = h('input', { id: 'new-title', name: 'title', placeholder: 'What is this session about?', autocomplete: 'off' });
  const form = h('form', { class: 'card new-session', 'aria-labelledby': 'new-h' },
    h('h2', { id: 'new-h' }, 'New session'),
    h('div', { class: 'row' },
      h('div', { class: 'field' }, h('label', { for: 'new-title' }, 'Title'), title),
      h('div', { class: 'field' }, h('label', { for: 'new-repo' }, 'Repository'), repoSel, datalist),
      h('button', { type: 'submit', class: 'primary' }, 'Create'),
    ),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = {};
    if (title.value.trim()) body.title = title.value.trim();
    if (repoSel.value.trim()) body.repo = repoSel.value.trim();
    try {
      const s = await API.createSession(body);
      go(`#/s/${s.id}`);
    } catch (ex) {
      toast(`Could not create the session: ${ex.message}`, 'bad');
    }
  });
  const table = h('table', { class: 'sessions' },
    h('caption', { class: 'sr-only' }, 'Sessions'),
    h('thead', {}, h('tr', {}, ['Title', 'Repository', 'State', 'People', 'Last activity'].map((c) => h('th', { scope: 'col' }, c)))),
    tbody);
  clear(main).append(form, h('section', { class: 'card', 'aria-labelledby': 'list-h' }, h('h2', { id: 'list-h' }, 'Sessions'), table, more));

  let cursor = null;
  async function load() {
    try {
      const r = await API.listSessions(cursor);
      const rows = [];
      for (const s of r.sessions || []) {
        const peopleCell = h('td', { class: 'people' });
        tbody.append(h('tr', {},
          h('td', {}, h('a', { href: `#/s/${s.id}` }, s.title || s.id)),
          h('td', {}, s.repo || '—'),
          h('td', {}, h('span', { class: `state ${s.state || ''}` }, s.state || '')),
          peopleCell,
          h('td', {}, timeAgo(s.last_activity || s.created_at)),
        ));
        rows.push([s.id, peopleCell]);
      }
      fillPeople(rows);
      if (!tbody.firstChild) tbody.append(h('tr', {}, h('td', { colspan: '5', class: 'muted' }, 'No sessions yet: create one above.')));
      cursor = r.next_cursor || null;
      more.hidden = !cursor;
    } catch (ex) {
      if (ex.status === 401) return go('#/signin');
      toast(`Could not list sessions: ${ex.message}`, 'bad');
    }
  }
  // The list has no participants: fetch each visible session's status, 4 at a time.
  async function fillPeople(rows) {
    const next = async () => {
      const item = rows.shift();
      if (!item) return;
      const [id, cell] = item;
      try {
        const st = await API.getSession(id);
        const here = new Set((st.connected || []).map((c) => c.id));
        for (const p of (st.participants || []).slice(0, 6)) {
          const pid = p.user_id || p.id;
          cell.append(avatar({ id: pid, name: p.name || pid }, here.has(pid) ? '' : 'dim'));
        }
        cell.setAttribute('aria-label', `${(st.participants || []).length} participants, ${here.size} here now`);
      } catch {
        /* leave it empty */
      }
      await next();
    };
    await Promise.all([next(), next(), next(), next()]);
  }
  more.addEventListener('click', load);
  load();
  API.listRepos().then((repos) => {
    for (const r of repos) datalist.append(h('option', { value: r.name || r.id }, r.description || ''));
  });
  return { destroy() {} };
}

// ---------------------------------------------------------------------------------------------
// session view

function sessionView(sid) {
  const titleEl = h('h1', { class: 'title' }, sid);
  const metaEl = h('p', { class: 'meta muted' });
  const connEl = h('span', { class: 'conn', role: 'status', 'aria-live': 'polite' }, 'connecting…');
  const presenceEl = h('div', { class: 'presence', 'aria-label': 'People here now' });
  const stopBtn = h('button', { type: 'button', class: 'danger', disabled: true, title: 'Stop the running prompt' }, 'Stop');
  const log = h('ol', { class: 'log', 'aria-live': 'polite', 'aria-relevant': 'additions', 'aria-label': 'Session events' });
  const typingEl = h('p', { class: 'typing muted', 'aria-live': 'polite' });
  const ctxEl = h('div', { class: 'context', hidden: true });
  const ta = h('textarea', { id: 'prompt', name: 'prompt', rows: '3', placeholder: 'Ask the agent… (Enter to send, Shift+Enter for a new line)', required: true });
  const runBox = h('input', { id: 'run', type: 'checkbox', checked: true });
  const sendBtn = h('button', { type: 'submit', class: 'primary' }, 'Send');
  const form = h('form', { class: 'composer', 'aria-label': 'Prompt' },
    ctxEl,
    h('label', { for: 'prompt', class: 'sr-only' }, 'Prompt'),
    ta,
    h('div', { class: 'row' },
      h('label', { class: 'check', for: 'run' }, runBox, ' Run the agent (untick to only comment)'),
      typingEl,
      sendBtn),
  );
  // the Changes view (changes.js): opened on demand, refreshed by the session's git events
  const changes = changesPanel(sid, { toast });
  changes.el.hidden = true;
  const changesBtn = h('button', { type: 'button', class: 'changes-btn', 'aria-expanded': 'false', onclick: () => {
    changes.el.hidden = !changes.el.hidden;
    changesBtn.setAttribute('aria-expanded', String(!changes.el.hidden));
    if (!changes.el.hidden) changes.refresh();
  } }, 'Changes');
  const header = h('div', { class: 'session-head' },
    h('div', {}, titleEl, metaEl),
    h('div', { class: 'head-right' }, presenceEl, connEl, changesBtn, stopBtn));
  clear(main).append(h('section', { class: 'session' }, header, changes.el, log, form));

  const people = new Map(); // user id -> {id, name, connected, status}
  const typing = new Map(); // user id -> {name, until}
  const outputs = new Map(); // prompt id / exec id -> <pre>
  const running = new Set(); // prompt ids started and not ended
  const toolNames = new Map(); // tool call id -> name, for the results
  let lastOutput = null;
  let you = null;
  let stream = null;
  let destroyed = false;

  function renderPresence() {
    clear(presenceEl);
    const here = [...people.values()].filter((p) => p.connected);
    for (const p of here) {
      presenceEl.append(avatar(p, p.status && p.status !== 'active' ? 'dim' : ''));
    }
    presenceEl.setAttribute('aria-label', `Here now: ${here.map((p) => p.name || p.id).join(', ') || 'nobody'}`);
    presenceEl.dataset.count = String(here.length);
  }

  function renderTyping() {
    const now = Date.now();
    const names = [];
    for (const [id, t] of typing) {
      if (t.until < now) typing.delete(id);
      else if (!you || id !== you.id) names.push(t.name || id);
    }
    typingEl.textContent = names.length ? `${names.join(', ')} ${names.length > 1 ? 'are' : 'is'} typing…` : '';
  }
  const typingTimer = setInterval(renderTyping, 1000);

  function setRunning() {
    stopBtn.disabled = running.size === 0;
  }

  function renderContext() {
    const c = pendingContext;
    clear(ctxEl);
    ctxEl.hidden = !c;
    if (!c) return;
    const n = Array.isArray(c.elements) ? c.elements.length : 0;
    ctxEl.append(
      h('span', { class: 'chip' }, `DOM selection: ${n} element${n === 1 ? '' : 's'}${c.url ? ` from ${c.url}` : ''}`),
      h('button', { type: 'button', class: 'link', 'aria-label': 'Remove the DOM selection', onclick: () => { pendingContext = null; renderContext(); } }, 'remove'),
    );
  }
  contextListeners.add(renderContext);
  renderContext();

  // A long session would grow the page without bound: keep the newest MAX_ITEMS entries.
  const MAX_ITEMS = 3000;
  let trimmed = null;
  function add(el, ev) {
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
    if (ev) el.dataset.seq = String(ev.seq);
    log.append(el);
    if (log.childElementCount > MAX_ITEMS + 1) {
      if (!trimmed) {
        trimmed = h('li', { class: 'ev line trimmed' }, 'Older events are not shown here (see GET /v1/sessions/{id}/events).');
        log.prepend(trimmed);
      }
      while (log.childElementCount > MAX_ITEMS + 1) trimmed.nextElementSibling.remove();
    }
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function who(ev) {
    return (ev.author && (ev.author.name || ev.author.id)) || 'system';
  }

  function line(ev, cls, ...content) {
    return h('li', { class: `ev line ${cls}` }, h('time', { datetime: ev.ts }, clock(ev.ts)), ' ', ...content);
  }

  function outputFor(key, label) {
    let pre = outputs.get(key);
    if (!pre) {
      pre = h('pre', { class: 'output' });
      const li = h('li', { class: 'ev output-block' }, label ? h('div', { class: 'label' }, label) : null, pre);
      outputs.set(key, pre);
      add(li);
    }
    return pre;
  }

  async function showArtifact(ev, d) {
    const aid = d.artifact_id || d.id;
    const name = d.path || d.name || d.type || 'artifact';
    const li = h('li', { class: 'ev artifact' }, h('div', { class: 'label' }, `Artifact: ${name}`));
    add(li, ev);
    const url = d.url && /^https?:/.test(d.url) ? d.url : null;
    if (url) li.append(h('a', { href: url, target: '_blank', rel: 'noopener noreferrer', class: /\/pull\/|merge_requests/.test(url) ? 'pr' : '' }, /\/pull\//.test(url) ? `Pull request: ${url}` : url));
    if (aid && /^image\//.test(d.mime || '')) {
      try {
        const src = await API.artifactURL(sid, aid);
        li.append(h('img', { src, alt: name, loading: 'lazy' }));
      } catch {
        li.append(h('span', { class: 'muted' }, ' (image unavailable)'));
      }
    } else if (d.type === 'dom_selection') {
      li.append(h('span', { class: 'muted' }, ' DOM selection attached'));
    }
  }

  function render(ev) {
    const d = ev.data || {};
    const t = ev.type;
    if (!changes.el.hidden) changes.onEvent(t);
    switch (t) {
      case 'message': {
        const role = d.role || 'user';
        if (ev.author && typing.delete(ev.author.id)) renderTyping(); // they sent it
        const li = h('li', { class: `ev msg ${role}` },
          h('div', { class: 'msg-head' },
            role === 'assistant' ? h('span', { class: 'avatar bot', 'aria-hidden': 'true' }, 'AI') : avatar({ id: ev.author && ev.author.id, name: who(ev) }),
            h('strong', {}, role === 'assistant' ? 'Agent' : who(ev)),
            d.run === false ? h('span', { class: 'tag' }, 'comment') : null,
            h('time', { datetime: ev.ts }, clock(ev.ts))),
          h('div', { class: 'msg-body' }, linkify(d.content ?? '')));
        if (d.context) {
          const n = d.context.elements ? d.context.elements.length : (Array.isArray(d.context.dom_selection) ? d.context.dom_selection.length : 0);
          li.append(h('div', { class: 'chip' }, `with DOM context${n ? `: ${n} elements` : ''}`));
        }
        add(li, ev);
        break;
      }
      case 'prompt.queued':
        add(line(ev, 'status', `Prompt queued by ${who(ev)}`), ev);
        break;
      case 'prompt.started':
        running.add(d.prompt_id);
        setRunning();
        add(line(ev, 'status', '▶ Agent started'), ev);
        lastOutput = null;
        break;
      case 'prompt.completed':
      case 'prompt.failed':
      case 'prompt.cancelled': {
        running.delete(d.prompt_id);
        setRunning();
        const bits = [];
        if (d.exit_code !== undefined && d.exit_code !== null) bits.push(`exit ${d.exit_code}`);
        if (d.duration_ms !== undefined) bits.push(`${(d.duration_ms / 1000).toFixed(1)} s`);
        if (d.reason) bits.push(d.reason);
        const label = t === 'prompt.completed' ? '✓ Completed' : t === 'prompt.failed' ? '✗ Failed' : '■ Cancelled';
        add(line(ev, `status ${t.split('.')[1]}`, `${label}${bits.length ? ` (${bits.join(', ')})` : ''}`), ev);
        lastOutput = null;
        break;
      }
      case 'agent.output': {
        const text = d.text ?? d.data ?? d.chunk ?? d.content ?? '';
        const key = `p:${d.prompt_id || 'current'}`;
        const pre = lastOutput && outputs.get(key) === lastOutput ? lastOutput : outputFor(key, 'Agent output');
        lastOutput = pre;
        pre.append(document.createTextNode(String(text)));
        pre.parentElement.dataset.seq = String(ev.seq);
        break;
      }
      case 'agent.tool_call':
        if (d.id) toolNames.set(d.id, d.name || d.tool);
        add(line(ev, 'tool', 'tool ', h('code', {}, d.name || d.tool || 'tool'), ' ', h('span', { class: 'muted' }, typeof d.input === 'string' ? d.input : JSON.stringify(d.input ?? d.args ?? {}).slice(0, 300))), ev);
        lastOutput = null;
        break;
      case 'agent.tool_result': {
        const out = typeof d.output === 'string' ? d.output : JSON.stringify(d.output ?? d.result ?? '');
        add(h('li', { class: 'ev tool-result' }, h('details', {}, h('summary', {}, `result of ${d.name || d.tool || toolNames.get(d.id) || 'tool'}${d.is_error ? ' (error)' : ''}`), h('pre', {}, out.slice(0, 20000)))), ev);
        lastOutput = null;
        break;
      }
      case 'agent.file_changed': {
        const li = h('li', { class: 'ev file' }, h('div', { class: 'label' }, `${d.change || d.action || 'changed'}: `, h('code', {}, d.path || '?')));
        if (d.diff) li.append(diffView(d.diff));
        add(li, ev);
        lastOutput = null;
        break;
      }
      case 'agent.artifact':
      case 'artifact':
      case 'artifact.created':
        showArtifact(ev, d);
        lastOutput = null;
        break;
      case 'agent.status':
        add(line(ev, 'status', `… ${d.text || d.status || d.message || ''}`), ev);
        break;
      case 'agent.done': {
        const li = line(ev, 'status', 'Agent finished');
        const pr = d.pr_url || (d.url && /\/pull\//.test(d.url) ? d.url : null);
        if (pr) li.append(' — ', h('a', { href: pr, class: 'pr', target: '_blank', rel: 'noopener noreferrer' }, 'Pull request'));
        add(li, ev);
        break;
      }
      case 'exec.started': {
        const argv = Array.isArray(d.argv) ? d.argv.join(' ') : d.script || d.command || '';
        outputFor(`x:${d.exec_id || d.id}`, `$ ${argv}`);
        break;
      }
      case 'exec.output': {
        const pre = outputFor(`x:${d.exec_id || d.id}`, '$ (command)');
        const span = h('span', { class: d.stream === 'stderr' ? 'stderr' : '' }, d.data ?? d.text ?? '');
        pre.append(span);
        break;
      }
      case 'exec.exited': {
        const pre = outputFor(`x:${d.exec_id || d.id}`, '$ (command)');
        const code = d.exit_code ?? (d.signal ? `signal ${d.signal}` : '?');
        pre.parentElement.append(h('div', { class: `exit ${d.exit_code === 0 ? 'ok' : 'bad'}` }, `exit ${code}${d.duration_ms !== undefined ? ` · ${d.duration_ms} ms` : ''}${d.truncated ? ' · truncated' : ''}`));
        break;
      }
      case 'participant.joined':
      case 'participant.left': {
        const u = d.user || { id: ev.author && ev.author.id, name: who(ev) };
        const p = people.get(u.id) || { id: u.id, name: u.name };
        p.connected = t === 'participant.joined';
        if (p.connected && !p.status) p.status = 'active';
        people.set(u.id, p);
        renderPresence();
        add(line(ev, 'presence', `${u.name || u.id} ${p.connected ? 'joined' : 'left'}`), ev);
        break;
      }
      case 'session.created':
        add(line(ev, 'status', `Session created by ${who(ev)}${d.repo ? ` in ${d.repo}` : ''}`), ev);
        break;
      case 'pr.created': {
        const url = d.url || d.html_url;
        add(line(ev, 'status pr-line', 'Pull request opened: ', h('a', { href: url, class: 'pr', target: '_blank', rel: 'noopener noreferrer' }, d.number ? `#${d.number}` : url)), ev);
        break;
      }
      case 'git.commit':
        add(line(ev, 'status', 'Committed ', h('code', {}, String(d.sha || '').slice(0, 8)), ` on ${d.branch || '?'}${d.files !== undefined ? ` (${d.files} file${d.files === 1 ? '' : 's'})` : ''}${d.author && d.author.name ? ` as ${d.author.name}` : ''}`), ev);
        break;
      case 'git.pushed':
        add(line(ev, 'status', `Pushed ${d.branch || ''}${d.remote ? ` to ${d.remote}` : ''}`), ev);
        break;
      case 'session.snapshot':
        add(line(ev, 'status', `Snapshot ${d.snapshot_id || ''} taken`), ev);
        break;
      case 'session.rollback':
        add(line(ev, 'status', `Rolled back to snapshot ${d.snapshot_id || ''} by ${who(ev)}`), ev);
        break;
      case 'session.reopened':
        add(line(ev, 'status', `Session reopened by ${who(ev)}`), ev);
        break;
      case 'session.ended':
        add(line(ev, 'status', `Session ended by ${who(ev)}`), ev);
        break;
      default:
        if (t.startsWith('sandbox.')) add(line(ev, 'status sandbox', `sandbox ${t.slice(8)}${d.source ? ` (${d.source})` : ''}${d.reason ? `: ${d.reason}` : ''}`), ev);
        else add(line(ev, 'other', h('code', {}, t)), ev);
    }
  }

  let metaBits = [];
  function renderMeta(seq) {
    metaEl.textContent = [...metaBits, `seq ${seq}`].join(' · ');
  }

  function onHello(f) {
    you = f.you || null;
    const s = f.session || {};
    titleEl.textContent = s.title || sid;
    metaBits = [s.repo ? `repo ${s.repo}` : null, s.state].filter(Boolean);
    renderMeta(f.last_seq);
    people.clear();
    for (const p of f.participants || []) {
      people.set(p.id || p.user_id, { id: p.id || p.user_id, name: p.name, connected: !!p.connected, status: p.status });
    }
    for (const c of s.connected || []) {
      const p = people.get(c.id) || { id: c.id, name: c.name };
      p.connected = true;
      p.status = c.status || 'active';
      people.set(c.id, p);
    }
    renderPresence();
    setRunning();
  }

  stream = new SessionStream(sid);
  stream.addEventListener('hello', (e) => onHello(e.detail));
  const seen = [];
  window.sessiond.seen = seen; // delivered seqs, in order (tests check: no gap, no duplicate)
  stream.addEventListener('event', (e) => {
    seen.push(e.detail.seq);
    render(e.detail);
    renderMeta(e.detail.seq);
  });
  stream.addEventListener('frame', (e) => {
    const f = e.detail;
    if (f.type === 'presence.typing' && f.user) {
      if (f.typing === false) typing.delete(f.user.id);
      else typing.set(f.user.id, { name: f.user.name, until: Date.now() + 5000 });
      renderTyping();
    } else if (f.type === 'presence.status' && f.user) {
      const p = people.get(f.user.id) || { id: f.user.id, name: f.user.name, connected: true };
      p.status = f.status;
      people.set(f.user.id, p);
      renderPresence();
    }
  });
  stream.addEventListener('servererror', (e) => toast(e.detail.message || 'server error', 'bad'));
  stream.addEventListener('state', (e) => {
    const s = e.detail.state;
    connEl.textContent = { open: 'live', connecting: 'connecting…', reconnecting: 'reconnecting…', failed: 'disconnected', closed: '' }[s] || s;
    connEl.className = `conn ${s}`;
    if (s === 'failed') {
      if (e.detail.code === 4401 || e.detail.code === 401) go('#/signin');
      else if (e.detail.code === 4404 || e.detail.code === 404) toast('No such session.', 'bad');
      else toast(`Disconnected: ${e.detail.reason || e.detail.code || ''}`, 'bad');
    }
  });
  stream.start();

  // typing: at most one frame every 2 s while typing, and "stopped" when the box empties
  let lastTyping = 0;
  ta.addEventListener('input', () => {
    const now = Date.now();
    if (ta.value && now - lastTyping > 2000) {
      lastTyping = now;
      stream.send({ type: 'typing', typing: true });
    } else if (!ta.value && lastTyping) {
      lastTyping = 0;
      stream.send({ type: 'typing', typing: false });
    }
  });
  ta.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const content = ta.value.trim();
    if (!content) return;
    const body = { content, client_request_id: `web-${crypto.randomUUID()}` };
    if (!runBox.checked) body.run = false;
    if (pendingContext) body.context = pendingContext;
    sendBtn.disabled = true;
    try {
      // Retried once on a network error: client_request_id makes the retry harmless.
      try {
        await API.postMessage(sid, body);
      } catch (ex) {
        if (ex.status) throw ex;
        await API.postMessage(sid, body);
      }
      ta.value = '';
      pendingContext = null;
      renderContext();
      lastTyping = 0;
      stream.send({ type: 'typing', typing: false });
    } catch (ex) {
      toast(`Not sent: ${ex.message}`, 'bad');
    } finally {
      sendBtn.disabled = false;
      ta.focus();
    }
  });
  stopBtn.addEventListener('click', async () => {
    if (!stream.send({ type: 'cancel' })) {
      try {
        await API.cancel(sid);
      } catch (ex) {
        toast(`Could not stop: ${ex.message}`, 'bad');
      }
    }
  });
  // presence status: away when the tab is hidden, idle after 2 minutes without input
  let status = 'active';
  let idleTimer = null;
  const setStatus = (st) => {
    if (st !== status) {
      status = st;
      stream.send({ type: 'status', status: st });
    }
  };
  const onVis = () => setStatus(document.hidden ? 'away' : 'active');
  const onActivity = () => {
    if (!document.hidden) setStatus('active');
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => setStatus('idle'), 120000);
  };
  document.addEventListener('visibilitychange', onVis);
  for (const evName of ['keydown', 'pointerdown', 'focusin']) document.addEventListener(evName, onActivity);
  stream.addEventListener('state', (e) => {
    if (e.detail.state === 'open' && status !== 'active') stream.send({ type: 'status', status });
  });
  onActivity();
  ta.focus();

  return {
    destroy() {
      destroyed = true;
      changes.destroy();
      stream.stop();
      clearInterval(typingTimer);
      contextListeners.delete(renderContext);
      document.removeEventListener('visibilitychange', onVis);
      for (const evName of ['keydown', 'pointerdown', 'focusin']) document.removeEventListener(evName, onActivity);
      clearTimeout(idleTimer);
    },
    get destroyed() {
      return destroyed;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// router

async function route() {
  if (current) current.destroy();
  current = null;
  const hash = location.hash || '#/';
  if (!API.getToken() && hash !== '#/signin') {
    afterSignin = hash; // come back here once signed in
    return go('#/signin');
  }
  if (API.getToken() && !meInfo) {
    try {
      meInfo = await API.me();
    } catch (ex) {
      if (ex.status === 401) {
        API.setToken(null);
        return go('#/signin');
      }
    }
    renderNav();
  }
  if (meInfo && hash === '#/signin') return go(afterSignin);
  const m = /^#\/s\/([A-Za-z0-9_-]{1,64})$/.exec(hash);
  if (hash === '#/signin') current = signinView();
  else if (m) current = sessionView(m[1]);
  else current = listView();
  main.focus({ preventScroll: true });
}

// The extension's side panel (our parent frame) hands over the user's token and DOM context.
// Only a chrome-extension:// parent or our own origin is listened to; the CSP's
// frame-ancestors already limits who may frame this page to the configured extension ids.
window.addEventListener('message', (e) => {
  if (e.source !== window.parent || window.parent === window) return;
  if (!(e.origin.startsWith('chrome-extension://') || e.origin === location.origin)) return;
  const m = e.data || {};
  if (m.type === 'sessiond.token' && typeof m.token === 'string') {
    if (m.token !== API.getToken() || location.hash === '#/signin') {
      API.setToken(m.token);
      meInfo = null;
      if (location.hash === '#/signin') go(afterSignin);
      else route();
    }
  } else if (m.type === 'sessiond.context' && m.context && typeof m.context === 'object') {
    pendingContext = m.context;
    for (const f of contextListeners) f();
    toast('DOM selection attached to your next prompt.');
  } else if (m.type === 'sessiond.open' && /^[A-Za-z0-9_-]{1,64}$/.test(m.session || '')) {
    go(`#/s/${m.session}`);
  }
});
if (embedded && window.parent !== window) window.parent.postMessage({ type: 'sessiond.ready' }, '*');

window.addEventListener('hashchange', route);
route();

