'use strict';
// Chat page: conversation list, message view and streamed replies (SSE).
// Sign-in (docs/auth.md): the host app's token from `data-token` on this script tag, or from
// `window.streamchatGetToken()`; none in development. coach.js (loaded first) holds the
// session, shared with the coach panel.

const auth = window.Coach.session({ token: document.currentScript?.dataset.token });

const $ = (sel) => document.querySelector(sel);
const els = {
  list: $('[data-testid="conversation-list"]'),
  newChat: $('[data-testid="new-chat"]'),
  title: $('[data-testid="chat-title"]'),
  total: $('[data-testid="total-cost"]'),
  empty: $('[data-testid="empty-state"]'),
  messages: $('[data-testid="message-list"]'),
  error: $('[data-testid="app-error"]'),
  form: $('[data-testid="composer"]'),
  input: $('[data-testid="composer-input"]'),
  send: $('[data-testid="send"]'),
  stop: $('[data-testid="stop"]'),
};

const state = {
  conversations: [],
  next: null, // the URL of the list's next page (GET /api/conversations answers 50 at a time)
  loadingMore: false,
  openId: null,
  views: new Map(), // message id -> DOM refs of the open conversation
  stream: null,
  streamingId: null,
  sending: false,
  loaded: false,
  // Bumped on every navigation so late responses for a previous view are dropped.
  navSeq: 0,
};

const ROLE_LABELS = { user: 'You', assistant: 'Assistant', system: 'System' };
const STATUS_LABELS = { streaming: 'streaming…', reconnecting: 'reconnecting…' };
// A reply that ended on its own but not whole: said under the answer.
const FINISH_NOTES = {
  length: 'Cut off at the token limit.',
  content_filter: 'Stopped by the provider\'s content filter.',
};

// ---------- helpers ----------

// Strings become text nodes (Element.append), so model output is never parsed as HTML.
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

function formatUsd(v) {
  if (v == null || v === '' || !Number.isFinite(Number(v))) return '—';
  return '$' + Number(v).toFixed(6);
}

async function api(method, url, body) {
  let res;
  try {
    res = await auth.fetch(url, {
      method,
      headers: body ? { 'Content-Type': 'application/json', Accept: 'application/json' } : { Accept: 'application/json' },
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch {
    throw new Error('Could not reach the server. Check your connection and try again.');
  }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => null);
  if (res.status === 401) throw new Error(window.Coach.signInMessage(data));
  if (!res.ok) throw new Error(data?.error?.message || `Request failed (HTTP ${res.status}).`);
  return data;
}

function showError(err) {
  els.error.textContent = err instanceof Error ? err.message : String(err);
  els.error.hidden = false;
}
function clearError() {
  els.error.hidden = true;
  els.error.textContent = '';
}

// The open conversation lives in the URL hash so a reload mid-reply can find and resume it.
function hashId() {
  return new URLSearchParams(location.hash.slice(1)).get('conversation');
}
function setHash(id) {
  history.replaceState(null, '', id ? `#conversation=${encodeURIComponent(id)}` : location.pathname + location.search);
}

function setHeader(title, total) {
  els.title.textContent = title || 'New conversation';
  els.total.textContent = formatUsd(total);
}

function nearBottom() {
  const m = els.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 48;
}
function scrollToEnd() {
  els.messages.scrollTop = els.messages.scrollHeight;
}

// ---------- SSE ----------

// Wraps EventSource: lets the browser reconnect (server resumes after Last-Event-ID),
// and closes for good on `done`/`error` so it does not reconnect forever.
function openStream(url, on) {
  const es = new EventSource(url);
  let ended = false;
  let seen = 0;
  const parse = (e) => {
    try { return JSON.parse(e.data); } catch { return {}; }
  };
  const end = () => { ended = true; es.close(); };

  // Guard against an event replayed after a reconnect: appending it twice would corrupt the text.
  const fresh = (e) => {
    const id = Number(e.lastEventId);
    if (id && id <= seen) return false;
    if (id) seen = id;
    return true;
  };

  es.onopen = () => on.open?.();
  es.addEventListener('meta', (e) => on.meta?.(parse(e)));
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
  es.addEventListener('annotation', (e) => {
    if (fresh(e)) on.annotation(parse(e));
  });
  es.addEventListener('done', (e) => { end(); on.done(parse(e)); });
  es.addEventListener('error', (e) => {
    if (ended) return;
    // A server `error` event carries data; a connection error is a bare Event.
    if (typeof e.data === 'string') { end(); on.failed(parse(e)); return; }
    if (es.readyState === EventSource.CLOSED) { ended = true; on.closed(); } // 204 or HTTP error: browser gave up
    else on.reconnecting?.();
  });
  return { close: end };
}

// ---------- messages ----------

function createView(m) {
  const v = { id: m.id };
  v.badge = h('span', { class: 'badge', 'data-testid': 'message-status' });
  v.text = document.createTextNode(m.content || '');
  v.content = h('div', { class: 'msg-content', 'data-testid': 'message-content' }, v.text);
  v.error = h('p', { class: 'msg-error', 'data-testid': 'message-error', hidden: true });
  // The model's thinking: collapsed (the user opens it), hidden until there is some.
  v.thoughts = document.createTextNode(m.reasoning || '');
  v.thinkingLabel = h('summary', { 'data-testid': 'thinking-label' }, 'Thinking…');
  v.thinking = h('details', { class: 'msg-thinking', 'data-testid': 'thinking', hidden: !m.reasoning },
    v.thinkingLabel, h('div', { class: 'msg-thinking-text', 'data-testid': 'thinking-text' }, v.thoughts));
  v.citations = h('ol', { class: 'msg-citations', 'data-testid': 'citations', hidden: true });
  v.note = h('p', { class: 'msg-note', 'data-testid': 'finish-note', hidden: true });
  v.el = h('article', {
    class: `msg msg-${m.role}`, 'data-testid': 'message', 'data-role': m.role, 'data-message-id': m.id,
  },
  h('header', { class: 'msg-head' }, h('span', { class: 'msg-role' }, ROLE_LABELS[m.role] || m.role), v.badge),
  v.thinking, v.content, v.note, v.citations, v.error);
  for (const a of m.annotations || []) addCitation(v, a);

  if (m.role === 'assistant') {
    v.content.setAttribute('aria-live', 'polite');
    v.model = h('span', { 'data-testid': 'message-model' });
    v.tokens = h('span', { 'data-testid': 'message-tokens', title: 'prompt + completion tokens' });
    v.cost = h('span', { 'data-testid': 'message-cost' });
    v.el.append(h('footer', { class: 'msg-meta', 'data-testid': 'message-meta' }, v.model, v.tokens, v.cost));
  }
  updateView(v, m);
  return v;
}

// Applies only the fields present in `m`, so stream events can patch a message piecemeal.
function updateView(v, m) {
  if ('status' in m) {
    const s = m.status || 'complete';
    v.el.dataset.status = s;
    v.badge.className = `badge badge-${s}`;
    v.badge.textContent = STATUS_LABELS[s] || s;
    v.badge.hidden = s === 'complete';
    // aria-busy holds screen-reader announcements until the reply has finished.
    v.content.setAttribute('aria-busy', String(s === 'streaming'));
    // Once the reply is over, the model is no longer thinking: it thought.
    v.thinkingLabel.textContent = s === 'streaming' ? 'Thinking…' : 'Thought';
  }
  if ('finish_reason' in m) {
    const note = FINISH_NOTES[m.finish_reason];
    v.note.hidden = !note;
    v.note.textContent = note || '';
  }
  if (v.model && 'model' in m && (m.model || !v.model.textContent)) v.model.textContent = m.model || 'model —';
  if (v.tokens && 'usage' in m) {
    const u = m.usage;
    v.tokens.hidden = !u;
    if (u) v.tokens.textContent = `${u.prompt_tokens ?? '?'} prompt + ${u.completion_tokens ?? '?'} completion tokens`;
  }
  if (v.cost && 'cost_usd' in m) v.cost.textContent = formatUsd(m.cost_usd);
  if ('error' in m) {
    const msg = m.error && (m.error.message || m.error.code);
    v.error.hidden = !msg;
    v.error.textContent = msg || '';
  }
}

// Citations become links under the answer; only http(s) URLs are made clickable.
function addCitation(v, a) {
  if (!a || typeof a.url !== 'string') return;
  const safe = /^https?:\/\//i.test(a.url);
  const label = a.title || a.url;
  const link = safe ? h('a', { href: a.url, target: '_blank', rel: 'noopener noreferrer' }, label) : label;
  v.citations.append(h('li', { 'data-testid': 'citation', title: a.content || null }, link));
  v.citations.hidden = false;
}

function appendThought(v, text) {
  v.thinking.hidden = false;
  v.thoughts.appendData(text);
}

function clearReply(v) {
  v.text.data = '';
  v.thoughts.data = '';
  v.thinking.hidden = true;
  v.citations.replaceChildren();
  v.citations.hidden = true;
}

function appendMessage(m) {
  const v = createView(m);
  state.views.set(m.id, v);
  els.messages.append(v.el);
  els.empty.hidden = true;
  return v;
}

function clearMessages() {
  state.views.clear();
  els.messages.replaceChildren();
  els.empty.hidden = false;
}

// ---------- streaming a reply ----------

function updateComposer() {
  const busy = state.sending || state.streamingId != null;
  els.input.disabled = busy;
  els.send.disabled = busy;
  els.stop.hidden = state.streamingId == null;
}

function closeStream() {
  state.stream?.close();
  state.stream = null;
  state.streamingId = null;
  updateComposer();
}

function startStream(url, v, { focusStop = false } = {}) {
  closeStream();
  state.streamingId = v.id;
  updateComposer();
  els.stop.disabled = false;
  if (focusStop) els.stop.focus();

  const finish = () => {
    const refocus = document.activeElement === els.stop || document.activeElement === document.body;
    state.stream = null;
    state.streamingId = null;
    updateComposer();
    if (refocus) els.input.focus();
    loadConversations();
  };

  state.stream = openStream(url, {
    open: () => { if (v.el.dataset.status === 'streaming') updateView(v, { status: 'streaming' }); },
    reconnecting: () => { v.badge.textContent = STATUS_LABELS.reconnecting; },
    meta: (d) => updateView(v, { model: d.model }),
    reasoning: (text) => {
      const stick = nearBottom();
      appendThought(v, text);
      if (stick) scrollToEnd();
    },
    delta: (text) => {
      const stick = nearBottom();
      v.text.appendData(text);
      if (stick) scrollToEnd();
    },
    annotation: (a) => addCitation(v, a),
    done: (d) => {
      const costKnown = d.cost_usd != null;
      updateView(v, {
        status: d.status || (d.finish_reason === 'stopped' ? 'stopped' : 'complete'),
        finish_reason: d.finish_reason,
        // Without a cost the run saw no usage chunk either, so its token counts are not real.
        model: d.model, usage: costKnown ? d.usage ?? null : null, cost_usd: d.cost_usd ?? null,
      });
      finish();
      if (!costKnown) refreshCost(v, state.openId);
    },
    failed: (d) => {
      updateView(v, { status: d.status || 'error', error: { code: d.code, message: d.message } });
      finish();
    },
    // Ended without a terminal event (e.g. 204: already finished); the server has the final state.
    closed: async () => {
      const id = state.openId;
      finish();
      if (!id) return;
      const conv = await openConversation(id, { resume: false });
      if (conv?.messages?.find((m) => m.id === v.id)?.status === 'streaming') {
        showError('Lost the connection to this reply. Reload the page to resume it.');
      }
    },
  });
}

// A reply cut short (stopped, say) ends before the usage chunk; the server then looks its usage
// and cost up from the generation record, so ask for them again a few times.
async function refreshCost(v, conversationId, delays = [300, 1500, 5000]) {
  for (const ms of delays) {
    await new Promise((resolve) => setTimeout(resolve, ms));
    if (state.openId !== conversationId || state.views.get(v.id) !== v) return;
    const conv = await api('GET', `/api/conversations/${encodeURIComponent(conversationId)}`).catch(() => null);
    const m = conv?.messages?.find((x) => x.id === v.id);
    if (m?.cost_usd != null) {
      updateView(v, { model: m.model, usage: m.usage, cost_usd: m.cost_usd });
      setHeader(conv.title, conv.total_cost_usd);
      loadConversations();
      return;
    }
  }
}

async function stopReply() {
  const id = state.streamingId;
  if (!id) return;
  els.stop.disabled = true;
  try {
    await api('POST', `/api/messages/${encodeURIComponent(id)}/stop`);
    // The stream itself ends with `done` (finish_reason "stopped").
  } catch (err) {
    showError(err);
    els.stop.disabled = false;
  }
}

async function send() {
  const text = els.input.value.trim();
  if (!text || state.sending || state.streamingId) return;
  clearError();
  // Read before disabling the textarea, which drops focus to <body>.
  const hadFocus = els.form.contains(document.activeElement);
  state.sending = true;
  updateComposer();
  const seq = state.navSeq;
  const body = { message: text };
  if (state.openId) body.conversation_id = state.openId;

  let res;
  try {
    res = await api('POST', '/api/chat/messages', body);
  } catch (err) {
    state.sending = false;
    updateComposer();
    showError(err);
    els.input.focus();
    return;
  }
  state.sending = false;
  els.input.value = '';
  updateComposer();
  // The user navigated away while the request was in flight; the reply still lands in its conversation.
  if (seq !== state.navSeq) { loadConversations(); return; }

  if (state.openId !== res.conversation_id) {
    state.openId = res.conversation_id;
    setHash(state.openId);
    clearMessages();
    setHeader(null, 0);
  }
  appendMessage({ id: res.user_message_id, role: 'user', content: text, status: 'complete' });
  const v = appendMessage({
    id: res.message_id, role: 'assistant', content: '', status: 'streaming',
    model: null, usage: null, cost_usd: null, error: null,
  });
  scrollToEnd();
  startStream(res.stream_url, v, { focusStop: hadFocus });
  loadConversations();
}

// ---------- conversations ----------

// The list comes a page at a time: the next page loads when the end of the list (this sentinel)
// scrolls within 200px of view. Observing again after each render makes the observer report
// where the sentinel is now, so pages keep coming while it stays in view (a tall screen).
const listEnd = h('li', { class: 'conv-more', 'data-testid': 'conversation-list-end', 'aria-hidden': 'true' });
const listEndWatcher = new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) loadMore();
}, { root: els.list, rootMargin: '0px 0px 200px 0px' });

function renderList() {
  const items = state.conversations.map((c) => {
    const title = c.title || 'New conversation';
    const active = c.id === state.openId;
    return h('li', { class: active ? 'conv active' : 'conv', 'data-testid': 'conversation-item', 'data-conversation-id': c.id },
      h('button', {
        type: 'button', class: 'conv-open', 'aria-current': active ? 'true' : null,
        onclick: () => openConversation(c.id),
      },
      h('span', { class: 'conv-title', 'data-testid': 'conversation-title' }, title),
      h('span', { class: 'conv-cost', 'data-testid': 'conversation-cost' }, formatUsd(c.total_cost_usd))),
      h('button', {
        type: 'button', class: 'conv-delete', 'data-testid': 'delete-conversation',
        'aria-label': `Delete conversation “${title}”`, title: 'Delete conversation',
        onclick: () => deleteConversation(c.id),
      }, '×'));
  });
  if (!items.length && state.loaded) items.push(h('li', { class: 'conv-empty' }, 'No conversations yet.'));
  if (state.next) items.push(listEnd);
  els.list.replaceChildren(...items);
  listEndWatcher.disconnect();
  if (state.next) listEndWatcher.observe(listEnd);
}

async function loadMore() {
  const url = state.next;
  if (!url || state.loadingMore) return;
  state.loadingMore = true;
  let data;
  try {
    data = await api('GET', url);
  } catch (err) {
    showError(err);
    return;
  } finally {
    state.loadingMore = false;
  }
  if (url !== state.next) return; // the list was reloaded meanwhile
  const known = new Set(state.conversations.map((c) => c.id));
  state.conversations.push(...(data?.conversations || []).filter((c) => !known.has(c.id)));
  state.next = data?.next || null;
  renderList();
}

async function loadConversations() {
  try {
    const data = await api('GET', '/api/conversations?agent=chat');
    // Coach calls are stored as conversations too; the sidebar lists chats only.
    state.conversations = (data?.conversations || []).filter((c) => (c.agent ?? 'chat') === 'chat');
    // A reload starts again from the first page; the sentinel brings the rest back on scroll.
    state.next = data?.next || null;
    state.loaded = true;
    renderList();
    const open = state.conversations.find((c) => c.id === state.openId);
    if (open) setHeader(open.title, open.total_cost_usd);
  } catch (err) {
    showError(err);
  }
}

async function openConversation(id, { resume = true } = {}) {
  closeStream();
  clearError();
  const seq = ++state.navSeq;
  state.openId = id;
  setHash(id);
  renderList();

  let conv;
  try {
    conv = await api('GET', `/api/conversations/${encodeURIComponent(id)}`);
  } catch (err) {
    if (seq !== state.navSeq) return null;
    newChat({ focus: false });
    showError(err);
    return null;
  }
  if (seq !== state.navSeq) return null;

  clearMessages();
  setHeader(conv.title, conv.total_cost_usd);
  const messages = conv.messages || [];
  for (const m of messages) appendMessage(m);
  scrollToEnd();

  // After a reload mid-reply: replay the reply from the start into a cleared message.
  const last = [...messages].reverse().find((m) => m.role === 'assistant');
  if (resume && last?.status === 'streaming') {
    const v = state.views.get(last.id);
    clearReply(v);
    // No stream_url here (that was the page before the reload): the user's own token, in the URL.
    const url = await auth.streamUrl(`/api/messages/${encodeURIComponent(last.id)}/stream?last_event_id=0`);
    if (seq !== state.navSeq) return conv;
    startStream(url, v);
  }
  return conv;
}

function newChat({ focus = true } = {}) {
  closeStream();
  clearError();
  state.navSeq++;
  state.openId = null;
  setHash(null);
  clearMessages();
  setHeader(null, null);
  renderList();
  if (focus) els.input.focus();
}

async function deleteConversation(id) {
  clearError();
  try {
    await api('DELETE', `/api/conversations/${encodeURIComponent(id)}`);
  } catch (err) {
    showError(err);
    return;
  }
  if (id === state.openId) newChat({ focus: false });
  state.conversations = state.conversations.filter((c) => c.id !== id);
  renderList();
  els.newChat.focus(); // the focused delete button is gone
  loadConversations();
}

// ---------- wiring ----------

els.form.addEventListener('submit', (e) => { e.preventDefault(); send(); });
els.input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
els.stop.addEventListener('click', stopReply);
els.newChat.addEventListener('click', () => newChat());
window.addEventListener('hashchange', () => {
  const id = hashId();
  if (id && id !== state.openId) openConversation(id);
});

window.Coach.mount(document.getElementById('coach'), { getConversationId: () => state.openId, session: auth });

loadConversations();
const initial = hashId();
if (initial) openConversation(initial);
