// fiber.js - runs in the page's own JavaScript world (manifest "world": "MAIN"), because
// React keeps its fiber on DOM nodes as expando properties (__reactFiber$…, or
// __reactInternalInstance$… before React 17) that an isolated content script cannot see.
// content.js marks the elements it wants with data-sessiond-probe and dispatches
// "sessiond:probe" (synchronously); this writes the nearest component's name into
// data-sessiond-react. It reads nothing else and sends nothing anywhere.
(() => {
  if (window.__sessiondFiberProbe) return;
  window.__sessiondFiberProbe = true;

  function fiberOf(el) {
    for (const k of Object.keys(el)) {
      if (k.startsWith('__reactFiber$') || k.startsWith('__reactInternalInstance$')) return el[k];
    }
    return null;
  }

  function nameOf(type) {
    if (!type) return null;
    if (typeof type === 'function') return type.displayName || type.name || 'Anonymous';
    if (typeof type === 'object') {
      // forwardRef {render}, memo {type}, context providers {_context}
      if (type.displayName) return type.displayName;
      if (type.render) return type.render.displayName || type.render.name || 'ForwardRef';
      if (type.type) return nameOf(type.type);
    }
    return null;
  }

  function componentName(el) {
    let f = fiberOf(el);
    for (let i = 0; f && i < 100; i++, f = f.return) {
      const n = nameOf(f.type);
      if (n) return n;
    }
    return null;
  }

  document.addEventListener('sessiond:probe', () => {
    for (const el of document.querySelectorAll('[data-sessiond-probe]')) {
      const n = componentName(el);
      if (n) el.setAttribute('data-sessiond-react', String(n).slice(0, 100));
    }
  });
})();
