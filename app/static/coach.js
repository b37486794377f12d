// Embeddable coach widget.
//   <div id="coach"></div>
//   <script src="/static/coach.js" data-target="#coach" data-context-selector="#article"
//           data-token="<the host app's JWT for this user>"></script>
// or: Coach.mount(element, { contextSelector, getConversationId, endpoint, token, getToken })
// Sign-in (docs/auth.md): a token from `data-token` / `token`, or from `getToken()` (the option,
// else `window.streamchatGetToken`), sent as `Authorization: Bearer`. Without one (development)
// nothing is sent.
(() => {
  'use strict';
  if (window.Coach) return; // included twice

  // Only valid synchronously while this script runs.
  const script = document.currentScript;
  let count = 0;

  const CSS = `
.coach-panel{box-sizing:border-box;display:flex;flex-direction:column;gap:8px;max-width:100%;padding:12px;
  border:1px solid rgba(127,127,127,.35);border-radius:10px;background:var(--coach-bg,transparent);color:inherit;font:inherit}
.coach-panel *{box-sizing:border-box}
.coach-panel [hidden]{display:none!important}
.coach-title{margin:0;font-size:1rem;font-weight:600}
.coach-form{display:flex;flex-direction:column;gap:6px;margin:0}
.coach-label{font-size:.85rem;opacity:.8}
.coach-input{width:100%;padding:6px 8px;border:1px solid rgba(127,127,127,.5);border-radius:6px;background:transparent;color:inherit;font:inherit}
.coach-actions{display:flex;flex-wrap:wrap;gap:6px}
.coach-btn{padding:6px 12px;border:1px solid var(--coach-accent,#2557d6);border-radius:6px;
  background:var(--coach-accent,#2557d6);color:#fff;font:inherit;cursor:pointer}
.coach-btn:disabled{opacity:.55;cursor:not-allowed}
.coach-btn-secondary{background:transparent;color:inherit;border-color:rgba(127,127,127,.6)}
.coach-btn:focus-visible,.coach-input:focus-visible{outline:2px solid var(--coach-accent,#2557d6);outline-offset:2px}
.coach-output{white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.45}
.coach-output:empty{display:none}
.coach-meta{display:flex;flex-wrap:wrap;gap:4px 10px;margin:0;font-size:.8rem;opacity:.8;font-variant-numeric:tabular-nums}
.coach-badge{padding:0 6px;border:1px solid currentColor;border-radius:999px;font-size:.75rem}
.coach-error{margin:0;color:var(--coach-error,#c62828);font-size:.9rem}
.coach-thinking{font-size:.85rem;opacity:.8}
.coach-thinking summary{cursor:pointer}
.coach-thinking-text{white-space:pre-wrap;overflow-wrap:anywhere;padding-left:8px;border-left:2px solid currentColor}
.coach-citations{margin:0;padding-left:1.3rem;font-size:.85rem}
`;

  function injectStyle() {
    if (document.getElementById('coach-style')) return;
    const style = document.createElement('style');
    style.id = 'coach-style';
    style.textContent = CSS;
    document.head.append(style);
  }

  // Strings become text nodes, so advice text is never parsed as HTML.
  function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      el.setAttribute(k, v === true ? '' : String(v));
    }
    el.append(...children);
    return el;
  }

  const formatUsd = (v) => (v == null || v === '' || !Number.isFinite(Number(v)) ? '—' : '$' + Number(v).toFixed(6));

  // The user's token, shared by everything one page sends (the chat page uses it too). A
  // `getToken` is asked for a first token when none was given, and again when the server says
  // the one held has expired: host apps refresh their users' tokens, we never see how.
  function session({ token, getToken } = {}) {
    let current = token || null;
    let asking = null;
    const provider = () => getToken || (typeof window.streamchatGetToken === 'function' ? window.streamchatGetToken : null);
    const ask = async () => {
      const get = provider();
      if (!get) return null;
      // Concurrent requests that all find the token expired share one call to the host. A host
      // that cannot give one (its user signed out) throws: then we go without, and the
      // server's 401 puts "Sign-in needed" on the page rather than a network error.
      asking ||= Promise.resolve().then(get).catch(() => null).finally(() => { asking = null; });
      current = (await asking) || null;
      return current;
    };
    const send = (url, init, t) => fetch(url, {
      ...init, headers: { ...init.headers, ...(t ? { Authorization: `Bearer ${t}` } : {}) },
    });
    return {
      async token() { return current ?? ask(); },
      // fetch, with the token; on 401 token_expired, once more with a fresh one.
      async fetch(url, init = {}) {
        const res = await send(url, init, await this.token());
        if (res.status !== 401 || !provider()) return res;
        const code = await res.clone().json().then((d) => d?.error?.code, () => null);
        if (code !== 'token_expired') return res;
        return send(url, init, await ask());
      },
      // An EventSource cannot send headers: the token goes in the URL (`?access_token=`).
      async streamUrl(url) {
        const t = await this.token();
        const u = new URL(url, location.href);
        if (t) u.searchParams.set('access_token', t);
        return u.href;
      },
    };
  }

  // What a page shows its user when the server will not take its sign-in (a 401): in their
  // words, not the API's (the code is kept for whoever has to debug the host app's wiring).
  const SIGN_IN_PROBLEMS = {
    unauthorized: 'you are not signed in',
    token_expired: 'your sign-in has expired',
    invalid_token: 'your sign-in was not accepted',
  };
  function signInMessage(data) {
    const code = data?.error?.code;
    const problem = SIGN_IN_PROBLEMS[code] || 'you are not signed in';
    return `Sign-in needed: ${problem}. Sign in again, then reload this page.${code ? ` (${code})` : ''}`;
  }

  async function request(auth, method, url, body) {
    let res;
    try {
      res = await auth.fetch(url, {
        method,
        headers: body ? { 'Content-Type': 'application/json', Accept: 'application/json' } : { Accept: 'application/json' },
        body: body ? JSON.stringify(body) : undefined,
      });
    } catch {
      // A network failure and an answer the browser withheld (CORS) look the same from here.
      throw new Error(`No answer from ${url} (is the server up, and this page's origin in its CORS_ORIGINS?)`);
    }
    if (res.status === 204) return null;
    const data = await res.json().catch(() => null);
    if (res.status === 401) throw new Error(signInMessage(data));
    if (!res.ok) {
      // Status and code say what failed; the server's message says why.
      const code = data?.error?.code ? ` ${data.error.code}` : '';
      const why = data?.error?.message ? `: ${data.error.message}` : '';
      throw new Error(`${method} ${new URL(url, location.href).pathname} failed: HTTP ${res.status}${code}${why}`);
    }
    return data;
  }

  // Form fields hold their text in .value; anything else in its rendered text.
  function readContext(selector) {
    const el = selector && document.querySelector(selector);
    if (!el) return '';
    const text = el.matches('input, textarea, select') ? el.value : el.innerText ?? el.textContent;
    return (text || '').trim();
  }

  // The browser reconnects dropped streams by itself (server resumes after Last-Event-ID);
  // we close on `done`/`error` so it does not reconnect forever.
  function openStream(url, on) {
    const es = new EventSource(url);
    let ended = false;
    let seen = 0;
    const parse = (e) => {
      try { return JSON.parse(e.data); } catch { return {}; }
    };
    const end = () => { ended = true; es.close(); };
    const fresh = (e) => { // a replayed event would duplicate text
      const id = Number(e.lastEventId);
      if (id && id <= seen) return false;
      if (id) seen = id;
      return true;
    };
    es.addEventListener('meta', (e) => on.meta(parse(e)));
    es.addEventListener('reasoning', (e) => {
      if (!fresh(e)) return;
      const d = parse(e);
      if (typeof d.content === 'string') on.reasoning(d.content);
    });
    es.addEventListener('delta', (e) => {
      if (!fresh(e)) return;
      const d = parse(e);
      if (typeof d.content === 'string') on.delta(d.content);
    });
    es.addEventListener('annotation', (e) => { if (fresh(e)) on.annotation(parse(e)); });
    es.addEventListener('done', (e) => { end(); on.done(parse(e)); });
    es.addEventListener('error', (e) => {
      if (ended) return;
      if (typeof e.data === 'string') { end(); on.failed(parse(e)); return; } // server `error` event
      if (es.readyState === EventSource.CLOSED) { ended = true; on.closed(); } // 204 or HTTP error
    });
    return { close: end };
  }

  function mount(target, opts = {}) {
    const host = typeof target === 'string' ? document.querySelector(target) : target;
    if (!host) throw new Error('Coach.mount: target element not found');
    injectStyle();

    const n = ++count;
    // Resolve against the endpoint so the widget also works when the API lives elsewhere.
    const endpoint = new URL(opts.endpoint || '/api/coach/messages', location.href);
    const getConversationId = typeof opts.getConversationId === 'function' ? opts.getConversationId : () => null;
    const auth = opts.session || session({ token: opts.token, getToken: opts.getToken });

    const input = h('input', {
      type: 'text', id: `coach-question-${n}`, class: 'coach-input', 'data-testid': 'coach-question',
      autocomplete: 'off', placeholder: 'e.g. How can I make this clearer?',
    });
    const ask = h('button', { type: 'submit', class: 'coach-btn', 'data-testid': 'coach-ask' }, 'Ask coach');
    const stop = h('button', {
      type: 'button', class: 'coach-btn coach-btn-secondary', 'data-testid': 'coach-stop', hidden: true,
    }, 'Stop');
    const form = h('form', { class: 'coach-form' },
      h('label', { class: 'coach-label', for: input.id }, 'Question (optional)'),
      input,
      h('div', { class: 'coach-actions' }, ask, stop));
    const error = h('p', { class: 'coach-error', role: 'alert', 'data-testid': 'coach-error', hidden: true });
    const text = document.createTextNode('');
    const output = h('div', {
      class: 'coach-output', 'data-testid': 'coach-output', 'aria-live': 'polite', 'aria-busy': 'false',
    }, text);
    // The coach's thinking, collapsed until opened; its citations as links under the advice.
    const thoughts = document.createTextNode('');
    const thinkingLabel = h('summary', {}, 'Thinking…');
    const thinking = h('details', { class: 'coach-thinking', 'data-testid': 'coach-thinking', hidden: true },
      thinkingLabel, h('div', { class: 'coach-thinking-text' }, thoughts));
    const citations = h('ol', { class: 'coach-citations', 'data-testid': 'coach-citations', hidden: true });
    const badge = h('span', { class: 'coach-badge', 'data-testid': 'coach-status', hidden: true });
    const model = h('span', { 'data-testid': 'coach-model' });
    const tokens = h('span', { 'data-testid': 'coach-tokens', hidden: true });
    const cost = h('span', { 'data-testid': 'coach-cost' });
    const meta = h('p', { class: 'coach-meta', 'data-testid': 'coach-meta', hidden: true }, badge, model, tokens, cost);
    const panel = h('section', {
      class: 'coach-panel', 'data-testid': 'coach-panel', 'data-status': 'idle', 'aria-labelledby': `coach-title-${n}`,
    },
    h('h2', { class: 'coach-title', id: `coach-title-${n}` }, opts.title || 'Coach'),
    form, error, thinking, output, citations, meta);
    host.append(panel);

    let stream = null;
    let messageId = null;
    let conversationId = null;

    const setError = (msg) => {
      error.textContent = msg || '';
      error.hidden = !msg;
    };
    const setStatus = (s) => {
      panel.dataset.status = s;
      const busy = s === 'sending' || s === 'streaming';
      ask.disabled = busy;
      stop.hidden = s !== 'streaming';
      stop.disabled = false;
      output.setAttribute('aria-busy', String(busy));
      badge.hidden = s === 'complete' || s === 'sending' || s === 'idle';
      badge.textContent = s === 'streaming' ? 'streaming…' : s;
      thinkingLabel.textContent = s === 'streaming' || s === 'sending' ? 'Thinking…' : 'Thought';
    };
    const cite = (a) => {
      if (!a || typeof a.url !== 'string') return;
      const label = a.title || a.url;
      const link = /^https?:\/\//i.test(a.url)
        ? h('a', { href: a.url, target: '_blank', rel: 'noopener noreferrer' }, label) : label;
      citations.append(h('li', {}, link));
      citations.hidden = false;
    };
    const finish = (d) => {
      stream = null;
      const u = d.usage;
      if (d.model) model.textContent = d.model;
      tokens.hidden = !u;
      if (u) tokens.textContent = `${u.prompt_tokens ?? '?'} prompt + ${u.completion_tokens ?? '?'} completion tokens`;
      cost.textContent = formatUsd(d.cost_usd);
      setStatus(d.status || 'complete');
      if (d.message) setError(d.message);
      if (document.activeElement === stop || document.activeElement === document.body) ask.focus();
    };

    async function run() {
      if (stream) return;
      setError('');
      const body = {};
      const context = readContext(opts.contextSelector);
      const question = input.value.trim();
      const cid = getConversationId();
      if (context) body.context = context;
      if (question) body.question = question;
      if (cid) body.conversation_id = cid;
      if (!Object.keys(body).length) {
        setError('Type a question (or open a conversation) for the coach to look at.');
        input.focus();
        return;
      }

      const hadFocus = form.contains(document.activeElement);
      setStatus('sending');
      let res;
      try {
        res = await request(auth, 'POST', endpoint, body);
      } catch (err) {
        setStatus('idle');
        setError(err.message);
        if (hadFocus) input.focus();
        return;
      }
      messageId = res.message_id;
      conversationId = res.conversation_id;
      text.data = '';
      thoughts.data = '';
      thinking.hidden = true;
      citations.replaceChildren();
      citations.hidden = true;
      model.textContent = '';
      tokens.hidden = true;
      cost.textContent = formatUsd(null);
      meta.hidden = false;
      setStatus('streaming');
      if (hadFocus) stop.focus();

      // The stream_url carries a stream token of its own: no user token in it.
      stream = openStream(new URL(res.stream_url, endpoint), {
        meta: (d) => { if (d.model) model.textContent = d.model; },
        reasoning: (chunk) => { thinking.hidden = false; thoughts.appendData(chunk); },
        delta: (chunk) => text.appendData(chunk),
        annotation: cite,
        done: (d) => finish({
          ...d, status: d.status || (d.finish_reason === 'stopped' ? 'stopped' : 'complete'),
          // No cost means no usage chunk came (a stopped reply): its token counts are not real.
          usage: d.cost_usd == null ? null : d.usage,
        }),
        failed: (d) => finish({ status: d.status || 'error', message: d.message || d.code || 'The coach failed.' }),
        // Ended without a terminal event: ask the server for the stored final state.
        closed: async () => {
          let m = null;
          try {
            const conv = await request(auth, 'GET', new URL(`/api/conversations/${encodeURIComponent(conversationId)}`, endpoint));
            m = conv?.messages?.find((x) => x.id === messageId) || null;
          } catch { /* fall through: state unknown */ }
          if (m?.content && m.content.length > text.data.length) text.data = m.content;
          // A reply the server still calls "streaming" but will not stream to us is effectively interrupted.
          const status = !m || m.status === 'streaming' ? 'interrupted' : m.status;
          finish({ ...m, status, message: m?.error?.message });
        },
      });
    }

    async function stopReply() {
      if (!stream || !messageId) return;
      stop.disabled = true;
      try {
        await request(auth, 'POST', new URL(`/api/messages/${encodeURIComponent(messageId)}/stop`, endpoint));
        // The stream then ends with `done` (finish_reason "stopped").
      } catch (err) {
        setError(err.message);
        stop.disabled = false;
      }
    }

    form.addEventListener('submit', (e) => { e.preventDefault(); run(); });
    stop.addEventListener('click', stopReply);

    return {
      element: panel,
      ask: run,
      stop: stopReply,
      destroy() {
        stream?.close();
        panel.remove();
      },
    };
  }

  window.Coach = { mount, session, signInMessage };

  const targetSel = script?.dataset.target;
  if (targetSel) {
    const auto = () => {
      const el = document.querySelector(targetSel);
      if (el) {
        mount(el, {
          contextSelector: script.dataset.contextSelector, endpoint: script.dataset.endpoint, token: script.dataset.token,
        });
      }
    };
    if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', auto);
    else auto();
  }
})();
