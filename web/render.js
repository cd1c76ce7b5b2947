// render.js - DOM building that is safe by construction: text from events only ever becomes
// text nodes or attribute values checked here (links must be http/https). No innerHTML.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'href' || k === 'src') el.setAttribute(k, safeURL(v));
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** Only http(s), blob:, same-origin relative and fragment URLs pass; anything else is "#". */
export function safeURL(u) {
  const s = String(u || '');
  if (s.startsWith('#') || (s.startsWith('/') && !s.startsWith('//'))) return s;
  try {
    const p = new URL(s, location.href);
    if (p.protocol === 'http:' || p.protocol === 'https:' || p.protocol === 'blob:') return p.href;
  } catch {
    /* fall through */
  }
  return '#';
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function timeAgo(v) {
  if (!v) return '';
  const t = typeof v === 'number' ? v : Date.parse(v);
  if (!Number.isFinite(t)) return '';
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return new Date(t).toLocaleDateString();
}

export function clock(ts) {
  const t = Date.parse(ts);
  return Number.isFinite(t) ? new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '';
}

export function initials(name) {
  const parts = String(name || '?').trim().split(/[\s._@-]+/).filter(Boolean);
  return ((parts[0] || '?')[0] + (parts[1] ? parts[1][0] : '')).toUpperCase();
}

/** A stable hue for a user id, so each person keeps their colour. */
export function hue(id) {
  let x = 0;
  for (const ch of String(id || '')) x = (x * 31 + ch.codePointAt(0)) % 360;
  return x;
}

export function avatar(p, extra = '') {
  const el = h('span', { class: `avatar ${extra}`, title: p.name || p.id, 'aria-label': p.name || p.id },
    initials(p.name || p.id));
  el.style.setProperty('--h', String(hue(p.id || p.name)));
  return el;
}

/** A unified diff with per-line classes (text only). */
export function diffView(text) {
  const pre = h('pre', { class: 'diff' });
  for (const line of String(text).split('\n')) {
    let cls = '';
    if (line.startsWith('+') && !line.startsWith('+++')) cls = 'add';
    else if (line.startsWith('-') && !line.startsWith('---')) cls = 'del';
    else if (line.startsWith('@@')) cls = 'hunk';
    pre.appendChild(h('span', { class: cls }, line + '\n'));
  }
  return pre;
}

/** Plain text with http(s) URLs turned into links (the rest stays text). */
export function linkify(text) {
  const out = [];
  const re = /https?:\/\/[^\s<>"')\]]+/g;
  let last = 0;
  let m;
  const s = String(text ?? '');
  while ((m = re.exec(s))) {
    if (m.index > last) out.push(s.slice(last, m.index));
    out.push(h('a', { href: m[0], target: '_blank', rel: 'noopener noreferrer' }, m[0]));
    last = m.index + m[0].length;
  }
  if (last < s.length) out.push(s.slice(last));
  return out;
}
