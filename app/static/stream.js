// The one client for a reply's stream, loaded by the chat page (app.js) and the coach widget
// (coach.js): an EventSource that the browser reconnects by itself (the server resumes after
// Last-Event-ID), that drops an event replayed after a reconnect (appending it twice would
// corrupt the text), and that closes for good on `done` or `error`, so it does not reconnect to
// a finished reply forever. The event names are the wire's (docs/api.md: "The streaming contract").
(() => {
  'use strict';
  if (window.StreamchatStream) return; // loaded twice (the page and an embedded widget)

  const parse = (e) => {
    try { return JSON.parse(e.data); } catch { return {}; }
  };

  // `on`: open?, meta?, reasoning(text), delta(text), annotation(a), done(d), failed(d),
  // closed() (ended without a terminal event: 204 or an HTTP error), reconnecting?.
  function open(url, on) {
    const es = new EventSource(url);
    let ended = false;
    let seen = 0;
    const end = () => { ended = true; es.close(); };
    const fresh = (e) => {
      const id = Number(String(e.lastEventId).split(':').pop());
      if (id && id <= seen) return false;
      if (id) seen = id;
      return true;
    };
    const text = (handler) => (e) => {
      if (!fresh(e)) return;
      const d = parse(e);
      if (typeof d.content === 'string') handler?.(d.content);
    };

    es.onopen = () => on.open?.();
    es.addEventListener('meta', (e) => on.meta?.(parse(e)));
    es.addEventListener('reasoning', text(on.reasoning));
    es.addEventListener('delta', text(on.delta));
    es.addEventListener('annotation', (e) => { if (fresh(e)) on.annotation?.(parse(e)); });
    es.addEventListener('done', (e) => { end(); on.done(parse(e)); });
    es.addEventListener('error', (e) => {
      if (ended) return;
      // A server `error` event carries data; a connection error is a bare Event.
      if (typeof e.data === 'string') { end(); on.failed(parse(e)); return; }
      if (es.readyState === EventSource.CLOSED) { ended = true; on.closed(); } // the browser gave up
      else on.reconnecting?.();
    });
    return { close: end };
  }

  window.StreamchatStream = { open };
})();
