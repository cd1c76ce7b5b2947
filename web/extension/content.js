// content.js - the "select area" mode. The user drags a rectangle over the page; every
// visible element lying inside it is described as {tag, id, classes, text (<=100 chars),
// rect, reactComponent} and the list goes to the side panel, which attaches it to the next
// prompt as DOM context. No screenshot, no page HTML: just these fields.
(() => {
  if (globalThis.__sessiondContent) return;

  const MAX_ELEMENTS = 200;
  const MAX_TEXT = 100;
  const SKIP = new Set(['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE', 'META', 'LINK', 'HEAD', 'TITLE', 'BR']);
  const OVERLAY_ID = '__sessiond_select_overlay';

  function clip(s, n) {
    const cps = Array.from(String(s).replace(/\s+/g, ' ').trim());
    return cps.length > n ? cps.slice(0, n - 1).join('') + '…' : cps.join('');
  }

  // The component name straight from the fiber when we can see it (we run in the page's
  // world in tests); otherwise fiber.js answers through data-sessiond-react.
  function directComponent(el) {
    let f = null;
    for (const k of Object.keys(el)) {
      if (k.startsWith('__reactFiber$') || k.startsWith('__reactInternalInstance$')) {
        f = el[k];
        break;
      }
    }
    for (let i = 0; f && i < 100; i++, f = f.return) {
      const t = f.type;
      if (typeof t === 'function') return t.displayName || t.name || 'Anonymous';
      if (t && typeof t === 'object') {
        if (t.displayName) return t.displayName;
        if (t.render) return t.render.displayName || t.render.name || 'ForwardRef';
      }
    }
    return null;
  }

  function visible(el, r) {
    if (r.width <= 0 || r.height <= 0) return false;
    const cs = getComputedStyle(el);
    return cs.visibility !== 'hidden' && cs.display !== 'none' && Number(cs.opacity) !== 0;
  }

  /** Elements inside sel = {x, y, width, height} in document coordinates. */
  function extract(sel) {
    const sx = window.scrollX;
    const sy = window.scrollY;
    const x2 = sel.x + sel.width;
    const y2 = sel.y + sel.height;
    const picked = [];
    const all = document.body ? document.body.querySelectorAll('*') : [];
    for (const el of all) {
      if (picked.length >= MAX_ELEMENTS) break;
      if (SKIP.has(el.tagName) || el.id === OVERLAY_ID || el.closest(`#${OVERLAY_ID}`)) continue;
      const r = el.getBoundingClientRect();
      const rx = r.left + sx;
      const ry = r.top + sy;
      const tol = 2;
      if (rx < sel.x - tol || ry < sel.y - tol || rx + r.width > x2 + tol || ry + r.height > y2 + tol) continue;
      if (!visible(el, r)) continue;
      picked.push({ el, rect: { x: Math.round(rx), y: Math.round(ry), width: Math.round(r.width), height: Math.round(r.height) } });
    }
    // React component names: ask fiber.js (page world) in one synchronous round.
    for (const p of picked) p.el.setAttribute('data-sessiond-probe', '');
    document.dispatchEvent(new CustomEvent('sessiond:probe'));
    const out = picked.map(({ el, rect }) => {
      const viaProbe = el.getAttribute('data-sessiond-react');
      el.removeAttribute('data-sessiond-probe');
      el.removeAttribute('data-sessiond-react');
      const text = clip(el.innerText !== undefined ? el.innerText : el.textContent || '', MAX_TEXT);
      return {
        tag: el.tagName.toLowerCase(),
        id: el.id || null,
        classes: Array.from(el.classList).slice(0, 20),
        text,
        rect,
        reactComponent: directComponent(el) || viaProbe || null,
      };
    });
    return {
      type: 'dom_selection',
      url: location.href,
      title: document.title,
      selection: { x: Math.round(sel.x), y: Math.round(sel.y), width: Math.round(sel.width), height: Math.round(sel.height) },
      viewport: { width: window.innerWidth, height: window.innerHeight },
      elements: out,
    };
  }

  function send(context) {
    if (globalThis.chrome && chrome.runtime && chrome.runtime.id) {
      chrome.runtime.sendMessage({ type: 'sessiond.selection', context }).catch(() => {});
    }
    window.dispatchEvent(new CustomEvent('sessiond:selection', { detail: context }));
  }

  /** Start the rectangle selection; resolves with the context (or null on Escape). */
  function start() {
    stop();
    return new Promise((resolve) => {
      const ov = document.createElement('div');
      ov.id = OVERLAY_ID;
      ov.setAttribute('role', 'dialog');
      ov.setAttribute('aria-label', 'Drag to select an area; Escape cancels');
      Object.assign(ov.style, {
        position: 'fixed', inset: '0', zIndex: '2147483647', cursor: 'crosshair',
        background: 'rgba(36,87,197,0.08)',
      });
      const box = document.createElement('div');
      Object.assign(box.style, {
        position: 'fixed', border: '2px solid #2457c5', background: 'rgba(36,87,197,0.15)',
        display: 'none', pointerEvents: 'none',
      });
      const hint = document.createElement('div');
      hint.textContent = 'sessiond: drag to select an area (Esc to cancel)';
      Object.assign(hint.style, {
        position: 'fixed', top: '8px', left: '50%', transform: 'translateX(-50%)',
        background: '#16181d', color: '#fff', font: '13px system-ui, sans-serif',
        padding: '4px 10px', borderRadius: '6px', pointerEvents: 'none',
      });
      ov.append(box, hint);
      let x0 = 0;
      let y0 = 0;
      let dragging = false;
      const finish = (ctx) => {
        document.removeEventListener('keydown', onKey, true);
        ov.remove();
        resolve(ctx);
      };
      const onKey = (e) => {
        if (e.key === 'Escape') {
          e.preventDefault();
          finish(null);
        }
      };
      ov.addEventListener('mousedown', (e) => {
        e.preventDefault();
        dragging = true;
        x0 = e.clientX;
        y0 = e.clientY;
        Object.assign(box.style, { display: 'block', left: `${x0}px`, top: `${y0}px`, width: '0px', height: '0px' });
      });
      ov.addEventListener('mousemove', (e) => {
        if (!dragging) return;
        Object.assign(box.style, {
          left: `${Math.min(x0, e.clientX)}px`, top: `${Math.min(y0, e.clientY)}px`,
          width: `${Math.abs(e.clientX - x0)}px`, height: `${Math.abs(e.clientY - y0)}px`,
        });
      });
      ov.addEventListener('mouseup', (e) => {
        if (!dragging) return;
        dragging = false;
        const vx = Math.min(x0, e.clientX);
        const vy = Math.min(y0, e.clientY);
        const w = Math.abs(e.clientX - x0);
        const h = Math.abs(e.clientY - y0);
        ov.style.display = 'none'; // not part of the selection
        const ctx = w < 4 || h < 4 ? null : extract({ x: vx + window.scrollX, y: vy + window.scrollY, width: w, height: h });
        if (ctx) send(ctx);
        finish(ctx);
      });
      document.addEventListener('keydown', onKey, true);
      document.documentElement.appendChild(ov);
    });
  }

  function stop() {
    const ov = document.getElementById(OVERLAY_ID);
    if (ov) ov.remove();
  }

  if (globalThis.chrome && chrome.runtime && chrome.runtime.onMessage) {
    chrome.runtime.onMessage.addListener((msg, _sender, reply) => {
      if (msg && msg.type === 'sessiond.select') {
        start();
        reply({ ok: true });
      }
    });
  }

  globalThis.__sessiondContent = { extract, start, stop };
})();
