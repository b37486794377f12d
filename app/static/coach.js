// Embeddable coach widget.
//   <div id="coach"></div>
//   <script src="/static/coach.js" data-target="#coach" data-context-selector="#article"
//           data-token="<the host app's JWT for this user>" data-model="openai/gpt-4o-mini"></script>
// (data-model is optional: the model the coach answers with; without it, the coach's own)
// or: Coach.mount(element, { contextSelector, getConversationId, endpoint, token, getToken, model })
// Sign-in (docs/auth.md): a token from `data-token` / `token`, or from `getToken()` (the option,
// else `window.streamchatGetToken`), sent as `Authorization: Bearer`. Without one (development)
// nothing is sent.
(() => {
  'use strict';
  if (window.Coach) return; // included twice

  // Only valid synchronously while this script runs.
  const script = document.currentScript;
  let count = 0;

  // Beside this script: its styles (a stylesheet, not an inline <style>, so a page whose CSP
  // allows only its own origin's styles shows the panel as designed), the stream client it
  // shares with the chat page (stream.js) and the uploader (uploads.js, for a document). Each
  // loaded once, whichever widget is mounted first.
  const base = new URL('.', script?.src || location.href);
  function injectStyle() {
    if (document.getElementById('coach-style')) return;
    const link = document.createElement('link');
    link.id = 'coach-style';
    link.rel = 'stylesheet';
    link.href = new URL('coach.css', base).href;
    document.head.append(link);
  }
  const loading = new Map();
  function loadScript(file, global) {
    if (window[global]) return Promise.resolve(window[global]);
    if (!loading.has(file)) {
      loading.set(file, new Promise((resolve, reject) => {
        const tag = document.createElement('script');
        tag.src = new URL(file, base).href;
        tag.onload = () => resolve(window[global]);
        tag.onerror = () => { loading.delete(file); reject(new Error(`Could not load ${tag.src}`)); };
        document.head.append(tag);
      }));
    }
    return loading.get(file);
  }
  const loadStream = () => loadScript('stream.js', 'StreamchatStream');
  const loadUploads = () => loadScript('uploads.js', 'StreamchatUploads');

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

  // The coach turn's field naming the document's upload (docs/api.md).
  const DOCUMENT_FIELD = 'attachments';

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
      // Whether the host gave this page a token, or a way to get one (none: development, or a
      // host that forgot to: the sign-in message then says what is missing).
      async hasToken() { return Boolean(current || provider()); },
      // The token held now, without asking the host (for a request sent as the page goes away).
      peek() { return current; },
      // fetch, with the token; on 401 token_expired, once more with a fresh one.
      // A request that sent a token another one has already replaced (several were under
      // way when it expired) retries with the new one, without asking the host again.
      async fetch(url, init = {}) {
        const sent = await this.token();
        const res = await send(url, init, sent);
        if (res.status !== 401 || !provider()) return res;
        const code = await res.clone().json().then((d) => d?.error?.code, () => null);
        if (code !== 'token_expired') return res;
        return send(url, init, current && current !== sent ? current : await ask());
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
  // A page that was handed no token at all cannot be fixed by its user signing in again: it
  // says what is missing (the host app hands the token; docs/browser.md, "Signing in").
  function signInMessage(data, { tokenGiven = true } = {}) {
    const code = data?.error?.code;
    const tag = code ? ` (${code})` : '';
    if (!tokenGiven && (!code || code === 'unauthorized')) {
      return 'Sign-in needed: you are not signed in, and this page was given no sign-in token. '
        + 'Open it from the app you use it with, which signs you in (its developers: see '
        + `"Signing in" in docs/browser.md).${tag}`;
    }
    const problem = SIGN_IN_PROBLEMS[code] || 'you are not signed in';
    return `Sign-in needed: ${problem}. Sign in again, then reload this page.${tag}`;
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
    if (res.status === 401) throw new Error(signInMessage(data, { tokenGiven: await auth.hasToken() }));
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
    // A document for the coach to read (a PDF), uploaded as soon as it is chosen, sent with
    // each question until it is removed.
    const docInput = h('input', {
      type: 'file', accept: 'application/pdf', hidden: true, tabindex: '-1',
      'data-testid': 'coach-document-input', 'aria-label': 'Document for the coach (PDF)',
    });
    const docButton = h('button', {
      type: 'button', class: 'coach-btn coach-btn-secondary coach-doc-add', 'data-testid': 'coach-attach',
    }, 'Add a document (PDF)');
    const docName = h('span', { class: 'coach-doc-name', 'data-testid': 'coach-document-name' });
    const docFacts = h('span', { class: 'coach-doc-facts', 'data-testid': 'coach-document-facts' });
    const docRemove = h('button', {
      type: 'button', class: 'coach-doc-remove', 'data-testid': 'coach-document-remove', 'aria-label': 'Remove the document',
      title: 'Remove the document',
    }, '×');
    const docChip = h('div', { class: 'coach-doc', 'data-testid': 'coach-document', hidden: true },
      h('span', { class: 'coach-doc-icon', 'aria-hidden': 'true' }, 'PDF'),
      h('span', { class: 'coach-doc-text' }, docName, docFacts), docRemove);
    const form = h('form', { class: 'coach-form' },
      h('label', { class: 'coach-label', for: input.id }, 'Question (optional)'),
      input,
      docChip,
      h('div', { class: 'coach-actions' }, ask, stop, docButton, docInput));
    const error = h('p', { class: 'coach-error', role: 'alert', 'data-testid': 'coach-error', hidden: true });
    // The advice as Markdown, like the chat page's replies, where the page has loaded the
    // renderer (markdown.js); as plain text elsewhere. Rendered at most once a frame.
    const markdown = window.StreamchatMarkdown || null;
    const output = h('div', {
      class: markdown ? 'coach-output coach-markdown' : 'coach-output',
      'data-testid': 'coach-output', 'aria-live': 'polite', 'aria-busy': 'false',
    });
    let advice = '';
    let frame = 0;
    const render = () => {
      cancelAnimationFrame(frame);
      frame = 0;
      if (markdown) output.replaceChildren(markdown.render(advice));
      else output.textContent = advice;
    };
    const setAdvice = (value) => { advice = value; render(); };
    const addAdvice = (chunk) => {
      advice += chunk;
      frame ||= requestAnimationFrame(render);
    };
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
    // The document: {status: 'uploading' | 'ready', data: the server's description, controller}.
    let doc = null;
    const uploadsUrl = new URL('/api/uploads', endpoint);

    function showDoc() {
      docChip.hidden = !doc;
      docButton.hidden = Boolean(doc);
      if (!doc) return;
      docChip.setAttribute('aria-busy', String(doc.status === 'uploading'));
      docName.textContent = doc.name;
      docName.title = doc.name;
      docFacts.textContent = doc.status === 'uploading' ? 'Uploading…' : window.StreamchatUploads.facts(doc.data);
      docRemove.setAttribute('aria-label', `Remove ${doc.name}`);
    }

    async function attachDocument(file) {
      setError('');
      let uploader;
      try {
        uploader = await loadUploads();
      } catch (err) {
        setError(err.message);
        return;
      }
      const mine = { status: 'uploading', name: file.name, data: null, controller: new AbortController() };
      doc = mine;
      showDoc();
      try {
        mine.data = await uploader.upload(auth, uploadsUrl, file, { signal: mine.controller.signal });
      } catch (err) {
        if (err?.name === 'AbortError') return;
        if (doc === mine) doc = null;
        showDoc();
        setError(err?.status === 401 ? signInMessage(err.data, { tokenGiven: await auth.hasToken() }) : err.message);
        return;
      }
      if (doc !== mine) return;
      // The coach reads a PDF: an image would be refused when asked, so say it now.
      if (mine.data.type !== 'application/pdf') {
        doc = null;
        showDoc();
        uploader.remove(auth, mine.data.id, endpoint).catch(() => {});
        setError(`“${file.name}” was not attached: the coach takes a PDF as its document.`);
        return;
      }
      mine.status = 'ready';
      showDoc();
    }

    async function removeDocument() {
      const gone = doc;
      if (!gone) return;
      doc = null;
      showDoc();
      docButton.focus();
      if (gone.status === 'uploading') {
        gone.controller.abort();
        return;
      }
      // Sent with a question already, it belongs to that coach call; never sent, it goes now.
      if (gone.sent) return;
      try {
        await window.StreamchatUploads.remove(auth, gone.data.id, endpoint);
      } catch (err) {
        setError(err.message);
      }
    }

    // Back to an empty panel: no advice, thinking, citations or figures from before.
    function clear() {
      setAdvice('');
      thoughts.data = '';
      thinking.hidden = true;
      citations.replaceChildren();
      citations.hidden = true;
      model.textContent = '';
      tokens.hidden = true;
      cost.textContent = formatUsd(null);
      meta.hidden = true;
      setError('');
    }

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
      render(); // whole now, even where frames are not drawn (a background tab)
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
      if (doc?.status === 'uploading') {
        setError('Wait until the document has finished uploading.');
        return;
      }
      if (doc) body[DOCUMENT_FIELD] = [doc.data.id];
      if (!Object.keys(body).length) {
        setError('Type a question (or open a conversation) for the coach to look at.');
        input.focus();
        return;
      }
      // The host page's choice of model (`data-model`, or `model` to mount); none: the coach's own.
      if (opts.model) body.model = opts.model;

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
      let client;
      try {
        client = await loadStream();
      } catch (err) {
        setStatus('idle');
        setError(err.message);
        return;
      }
      clear();
      if (doc) doc.sent = true;
      messageId = res.message_id;
      conversationId = res.conversation_id;
      meta.hidden = false;
      setStatus('streaming');
      if (hadFocus) stop.focus();

      // The stream_url carries a stream token of its own: no user token in it.
      stream = client.open(new URL(res.stream_url, endpoint), {
        meta: (d) => { if (d.model) model.textContent = d.model; },
        reasoning: (chunk) => { thinking.hidden = false; thoughts.appendData(chunk); },
        delta: addAdvice,
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
          if (m?.content && m.content.length > advice.length) setAdvice(m.content);
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
    docButton.addEventListener('click', () => docInput.click());
    docInput.addEventListener('change', () => {
      const [file] = docInput.files;
      docInput.value = '';
      if (file) attachDocument(file);
    });
    docRemove.addEventListener('click', removeDocument);

    return {
      element: panel,
      ask: run,
      stop: stopReply,
      // A new subject (the chat page's New chat, another conversation opened): the advice on
      // the last one goes; one still streaming is left to finish on the server, unshown.
      reset() {
        stream?.close();
        stream = null;
        messageId = null;
        clear();
        input.value = '';
        setStatus('idle');
      },
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
          model: script.dataset.model,
        });
      }
    };
    if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', auto);
    else auto();
  }
})();
