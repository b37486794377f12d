// The element builder of the chat page (app.js) and its model picker (picker.js): one element,
// its attributes (an `on…` attribute is a listener; null or false leaves it out, true is a bare
// attribute) and its children. Strings become text nodes (Element.append), so model output is
// never parsed as HTML. The coach widget keeps its own: it is embedded in other pages alone.
(() => {
  'use strict';
  if (window.StreamchatDom) return;

  function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    el.append(...children.filter((c) => c != null));
    return el;
  }

  window.StreamchatDom = { h };
})();
