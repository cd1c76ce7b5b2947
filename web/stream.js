// stream.js - one session's live event stream over the WebSocket, with resume.
//
// The stream remembers the last seq it delivered; every (re)connect asks for ?after=lastSeq,
// and anything at or below lastSeq is dropped, so a reconnect after a drop or a server restart
// yields every event exactly once, in order. A `gap` frame (we fell behind) reconnects the
// same way. Close codes 4401/4403/4404 are final (auth, forbidden, no such session).

import { wsTicket } from './api.js';

const FINAL = new Set([4401, 4403, 4404, 4410]);

export class SessionStream extends EventTarget {
  constructor(sessionId, { after = 0 } = {}) {
    super();
    this.sid = sessionId;
    this.lastSeq = after;
    this.ws = null;
    this.closed = false;
    this.backoff = 250;
    this.state = 'idle';
    this.timer = null;
    this.pingTimer = null;
  }

  start() {
    this.closed = false;
    this.connect();
    return this;
  }

  stop() {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.pingTimer);
    if (this.ws) this.ws.close(1000, 'bye');
    this.ws = null;
    this.setState('closed');
  }

  setState(s, detail = {}) {
    this.state = s;
    this.dispatchEvent(new CustomEvent('state', { detail: { state: s, ...detail } }));
  }

  send(obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(obj));
      return true;
    }
    return false;
  }

  async connect() {
    if (this.closed) return;
    this.setState('connecting');
    let cred;
    try {
      cred = await wsTicket(this.sid);
    } catch (e) {
      this.setState('failed', { code: e.status, reason: e.message });
      return;
    }
    if (this.closed) return;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = new URLSearchParams({ after: String(this.lastSeq) });
    if (cred.ticket) q.set('ticket', cred.ticket);
    else if (cred.token) q.set('token', cred.token);
    const url = `${proto}//${location.host}/v1/sessions/${encodeURIComponent(this.sid)}/ws?${q}`;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      this.backoff = 250;
      this.setState('open');
      clearInterval(this.pingTimer);
      this.pingTimer = setInterval(() => this.send({ type: 'ping' }), 25000);
    };
    ws.onmessage = (m) => this.onFrame(m.data);
    ws.onclose = (ev) => {
      clearInterval(this.pingTimer);
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.closed) return;
      if (FINAL.has(ev.code)) {
        this.setState('failed', { code: ev.code, reason: ev.reason });
        return;
      }
      this.setState('reconnecting', { code: ev.code });
      this.timer = setTimeout(() => this.connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 5000);
    };
  }

  deliver(ev) {
    if (!ev) return;
    if (typeof ev.seq !== 'number') {
      // not persisted (presence.typing): no seq, nothing to resume
      this.dispatchEvent(new CustomEvent('frame', { detail: ev }));
      return;
    }
    if (ev.seq <= this.lastSeq) return; // duplicate (replay/live overlap, or a resend)
    this.lastSeq = ev.seq;
    this.dispatchEvent(new CustomEvent('event', { detail: ev }));
  }

  onFrame(data) {
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    switch (f.type) {
      case 'hello':
        this.dispatchEvent(new CustomEvent('hello', { detail: f }));
        break;
      case 'event':
        this.deliver(f.event);
        break;
      case 'events':
        for (const e of f.events || []) this.deliver(e);
        break;
      case 'gap':
        // We fell behind: reconnect and resume from what we have.
        if (this.ws) this.ws.close(4000, 'gap');
        break;
      case 'error':
        this.dispatchEvent(new CustomEvent('servererror', { detail: f }));
        break;
      default:
        // presence.typing and other ephemeral frames that are not numbered events
        this.dispatchEvent(new CustomEvent('frame', { detail: f }));
    }
  }
}
