// changes.js - the "Changes" panel of a session: the files the session changed with their
// diffs (GET /v1/sessions/{id}/diff: collapsible, added/removed colours, large files folded),
// the pull request badge (draft/open/merged/closed, CI state) with "Ready for review" or a
// "Create PR" button, and the snapshot list with "Roll back to here".
// Every string from the server is rendered as text (render.js h()).

import * as API from './api.js';
import { h, clear, timeAgo, diffView, safeURL } from './render.js';

const FOLD_LINES = 400; // a file diff longer than this starts folded
const enc = encodeURIComponent;

/** Split the unified text into per-file chunks, in the order of `files` (files without text:
 * past the cap or unreadable, get none). */
export function splitDiff(files, text) {
  const chunks = String(text || '').split(/^(?=diff --git )/m).filter((c) => c.startsWith('diff --git '));
  let k = 0;
  return files.map((f) => (f.additions === null || f.additions === undefined ? null : chunks[k++] ?? null));
}

function fileItem(f, chunk) {
  const lines = chunk ? chunk.split('\n').length : 0;
  const folded = f.large || f.binary || lines > FOLD_LINES;
  const counts = f.additions === null || f.additions === undefined ? '' : ` +${f.additions} −${f.deletions}`;
  const summary = h('summary', {},
    h('span', { class: `fstatus ${f.status}` }, f.status), ' ',
    h('code', { class: 'fpath' }, f.path),
    h('span', { class: 'fcounts' }, counts),
    f.large ? h('span', { class: 'tag' }, 'large file') : f.binary ? h('span', { class: 'tag' }, 'binary') : null,
    f.unreadable ? h('span', { class: 'tag' }, 'unreadable') : null,
    f.truncated ? h('span', { class: 'tag' }, 'truncated') : null);
  const body = chunk
    ? (f.large || f.binary ? h('p', { class: 'muted' }, f.large ? 'Large file: its content is not shown.' : 'Binary file.') : diffView(chunk))
    : h('p', { class: 'muted' }, 'No diff text: the answer reached its size cap before this file.');
  const d = h('details', { class: 'file-diff', 'data-path': f.path }, summary, body);
  if (!folded) d.open = true;
  else d.classList.add('folded');
  return h('li', {}, d);
}

const PR_STATES = new Set(['draft', 'open', 'merged', 'closed']);

/** The PR badge (or nothing for an absent or malformed pr). */
export function prBadge(pr) {
  if (!pr || typeof pr !== 'object') return null;
  const state = PR_STATES.has(pr.state) ? pr.state : 'open';
  const url = pr.url ? safeURL(pr.url) : '#';
  const label = `PR${Number.isInteger(pr.number) ? ` #${pr.number}` : ''} · ${state}`;
  const ci = ['pending', 'success', 'failure'].includes(pr.ci) ? pr.ci : null;
  return h('span', { class: `pr-badge ${state}`, 'data-state': state },
    url !== '#' ? h('a', { href: url, target: '_blank', rel: 'noopener noreferrer' }, label) : label,
    ci ? h('span', { class: `ci ${ci}`, title: `CI: ${ci}` }, ` CI ${ci === 'success' ? '✓' : ci === 'failure' ? '✗' : '…'}`) : null);
}

export function changesPanel(sid, { toast }) {
  const prEl = h('div', { class: 'pr-row' });
  const sumEl = h('p', { class: 'muted changes-sum' });
  const filesEl = h('ul', { class: 'files' });
  const snapsEl = h('ul', { class: 'snaps' });
  const againstSel = h('select', { 'aria-label': 'Compare with' },
    h('option', { value: 'base' }, 'since the session started'),
    h('option', { value: 'head' }, 'not yet committed'));
  const refreshBtn = h('button', { type: 'button', class: 'link' }, 'Refresh');
  const el = h('section', { class: 'changes card', 'aria-label': 'Changes' },
    h('div', { class: 'row changes-head' }, h('h2', {}, 'Changes'), againstSel, refreshBtn),
    prEl, sumEl, filesEl,
    h('h3', {}, 'Snapshots'), snapsEl);
  let busy = false;

  async function renderPR() {
    clear(prEl);
    let s = null;
    try {
      s = await API.getSession(sid);
    } catch {
      return;
    }
    const badge = prBadge(s && s.pr);
    if (badge) {
      prEl.append(badge);
      if (s.pr.state === 'draft') {
        prEl.append(' ', h('button', { type: 'button', class: 'ready', onclick: () => prCall({ draft: false }, 'Marked ready for review') }, 'Ready for review'));
      }
    } else if (s && s.repo) {
      prEl.append(h('button', { type: 'button', class: 'create-pr', onclick: () => prCall({}, 'Pull request created') }, 'Create PR'));
    }
  }

  async function prCall(body, done) {
    try {
      await API.api('POST', `/v1/sessions/${enc(sid)}/pull-request`, body);
      toast(done);
    } catch (ex) {
      toast(`Pull request: ${ex.message}`, 'bad');
    }
    renderPR();
  }

  async function renderDiff() {
    clear(filesEl);
    let d;
    try {
      d = await API.api('GET', `/v1/sessions/${enc(sid)}/diff?against=${enc(againstSel.value)}`);
    } catch (ex) {
      sumEl.textContent = ex.status === 404 ? 'This session has no repository: no diff.' : `No diff: ${ex.message}`;
      return;
    }
    const files = Array.isArray(d.files) ? d.files : [];
    sumEl.textContent = files.length
      ? `${d.files_total ?? files.length} file${files.length === 1 ? '' : 's'} changed, +${d.additions ?? 0} −${d.deletions ?? 0}${d.truncated ? ' (truncated)' : ''}`
      : 'No changes.';
    const chunks = splitDiff(files, d.diff);
    files.forEach((f, i) => filesEl.append(fileItem(f, chunks[i])));
  }

  async function renderSnaps() {
    clear(snapsEl);
    let r;
    try {
      r = await API.api('GET', `/v1/sessions/${enc(sid)}/snapshots`);
    } catch {
      return;
    }
    const list = (r && Array.isArray(r.snapshots) ? r.snapshots : []).slice().reverse();
    for (const s of list) {
      const id = s.id || s.snapshot_id;
      snapsEl.append(h('li', { 'data-snapshot': id },
        h('code', {}, id), ' ', h('span', {}, s.label || ''), ' ',
        h('span', { class: 'muted' }, s.created_at ? timeAgo(s.created_at) : ''), ' ',
        h('button', { type: 'button', class: 'rollback', onclick: () => rollback(id) }, 'Roll back to here')));
    }
    if (!list.length) snapsEl.append(h('li', { class: 'muted' }, 'No snapshots yet.'));
  }

  async function rollback(id) {
    if (!window.confirm(`Roll the workspace back to ${id}? Later changes to the files are replaced.`)) return;
    try {
      await API.api('POST', `/v1/sessions/${enc(sid)}/rollback`, { snapshot_id: id });
      toast(`Rolled back to ${id}`);
    } catch (ex) {
      toast(`Rollback: ${ex.message}`, 'bad');
    }
    refresh();
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    el.setAttribute('aria-busy', 'true');
    try {
      await Promise.all([renderPR(), renderDiff(), renderSnaps()]);
    } finally {
      busy = false;
      el.removeAttribute('aria-busy');
    }
  }
  refreshBtn.addEventListener('click', refresh);
  againstSel.addEventListener('change', refresh);

  let timer = null;
  /** An event of the session: refresh (debounced) when it may have changed what is shown. */
  function onEvent(type) {
    if (!/^(git\.|session\.rollback|session\.snapshot|prompt\.(completed|failed)|pr\.|session\.pr)/.test(type || '')) return;
    clearTimeout(timer);
    timer = setTimeout(refresh, 300);
  }
  return { el, refresh, onEvent, destroy() { clearTimeout(timer); } };
}
