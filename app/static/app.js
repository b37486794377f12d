'use strict';
// Chat page: conversation list, message view and streamed replies (SSE).
// Sign-in (docs/auth.md): the host app's token from `data-token` on this script tag, or from
// `window.streamchatGetToken()`; none in development. coach.js (loaded first) holds the
// session, shared with the coach panel; stream.js is the stream client both use, markdown.js
// the renderer of replies and advice.

const auth = window.Coach.session({ token: document.currentScript?.dataset.token });

const $ = (sel) => document.querySelector(sel);
const els = {
  list: $('[data-testid="conversation-list"]'),
  newChat: $('[data-testid="new-chat"]'),
  title: $('[data-testid="chat-title"]'),
  total: $('[data-testid="total-cost"]'),
  saved: $('[data-testid="total-cache-saved"]'),
  usage: $('[data-testid="usage"]'),
  empty: $('[data-testid="empty-state"]'),
  messages: $('[data-testid="message-list"]'),
  error: $('[data-testid="app-error"]'),
  form: $('[data-testid="composer"]'),
  input: $('[data-testid="composer-input"]'),
  send: $('[data-testid="send"]'),
  stop: $('[data-testid="stop"]'),
  searchForm: $('[data-testid="search-form"]'),
  searchInput: $('[data-testid="search-input"]'),
  results: $('[data-testid="search-results"]'),
  exportLinks: $('[data-testid="export"]'),
  exportMarkdown: $('[data-testid="export-markdown"]'),
  exportJson: $('[data-testid="export-json"]'),
  rename: $('[data-testid="rename"]'),
  share: $('[data-testid="share"]'),
  shareBox: $('[data-testid="share-box"]'),
  shareUrl: $('[data-testid="share-url"]'),
  shareCopy: $('[data-testid="share-copy"]'),
  shareRevoke: $('[data-testid="share-revoke"]'),
  jump: $('[data-testid="jump-latest"]'),
  undo: $('[data-testid="undo-bar"]'),
  signIn: $('[data-testid="sign-in-needed"]'),
  modelButton: $('[data-testid="model-button"]'),
  modelName: $('[data-testid="model-button-name"]'),
  chat: $('main.chat'),
  attach: $('[data-testid="attach"]'),
  attachInput: $('[data-testid="attach-input"]'),
  attachments: $('[data-testid="composer-attachments"]'),
  attachError: $('[data-testid="attach-error"]'),
  attachWarning: $('[data-testid="attach-warning"]'),
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
  searchSeq: 0, // likewise for searches: only the latest one's results are shown
  searchTimer: 0,
  // Following the reply: the message list stays at its end while it grows, until the reader
  // scrolls up (then "Jump to latest" brings them back and follows again).
  follow: true,
  // Deletions waiting out their few seconds of undo: conversation id -> {timer, send}.
  deleting: new Map(),
  signedOut: false, // the server refused the page's sign-in: the composer is off
  // The models the chat agent offers (GET /api/agents/chat/models) and its default; `model` is
  // the open conversation's (sticky on the server), or the one picked for the next message;
  // null: the default, and then no model is sent.
  models: [],
  defaultModel: null,
  model: null,
  // The files on the composer for the next message, in order: each uploaded at once
  // ({file, status: 'uploading' | 'ready', data: the server's description, controller}).
  attachments: [],
};
let coach = null; // the coach panel beside the conversation (mounted at the end)
const picker = window.StreamchatPicker.create();
const uploads = window.StreamchatUploads;

const ROLE_LABELS = { user: 'You', assistant: 'Assistant', system: 'System' };
const STATUS_LABELS = { streaming: 'streaming…', reconnecting: 'reconnecting…' };
// A reply that ended on its own but not whole: said under the answer.
const FINISH_NOTES = {
  length: 'Cut off at the token limit.',
  content_filter: 'Stopped by the provider\'s content filter.',
};

// A reply's error said as what to do, where the code alone tells it.
const ERROR_NOTES = {
  context_length_exceeded: "This conversation is too long for this model's context. Choose a model with a larger context, or start a new chat.",
  attachment_missing: 'A file attached to this message was deleted while it was being sent. Attach it again and send the message anew.',
};

// ---------- helpers ----------

// Replies are Markdown (markdown.js: escaped HTML, checked links, images as links, DOMPurify
// after); user messages stay plain text.
const markdown = window.StreamchatMarkdown;

const { h } = window.StreamchatDom; // static/dom.js

function formatUsd(v) {
  if (v == null || v === '' || !Number.isFinite(Number(v))) return '—';
  return '$' + Number(v).toFixed(6);
}

// An amount a person reads at a glance: cents when it is dollars, and as many decimals as a
// small amount needs to show its first three digits ($0.000049, $0.0123, $0.50, $12.35).
function formatSpend(v) {
  const n = Number(v);
  if (!Number.isFinite(n)) return '—';
  if (n === 0) return '$0.00';
  const decimals = Math.min(10, Math.max(2, 2 - Math.floor(Math.log10(Math.abs(n)))));
  const [whole, part] = n.toFixed(decimals).split('.');
  return `$${whole}.${part.replace(/0+$/, '').padEnd(2, '0')}`;
}

// What prompt caching saved (docs/caching.md), said quietly beside a cost, where it saved
// something: nothing when it is 0 or not known, nor when it is negative (a first turn's cache
// write, which is part of the cost and needs no words). The title has the exact amount.
function showCacheSaved(el, amount, what) {
  const n = Number(amount);
  const shown = amount != null && Number.isFinite(n) && n > 0;
  el.hidden = !shown;
  el.textContent = shown ? `saved ${formatUsd(n)} by caching` : '';
  el.title = shown
    ? `Prompt caching: part of ${what} was read from the provider's cache, billed at a fraction of the input price. It cost $${n.toFixed(12).replace(/0+$/, '')} less than without caching.`
    : '';
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
  if (res.status === 401) {
    signedOut(data);
    throw new Error(window.Coach.signInMessage(data, { tokenGiven: await auth.hasToken() }));
  }
  if (!res.ok) throw new Error(refusal(res, data?.error) || data?.error?.message || `Request failed (HTTP ${res.status}).`);
  return data;
}

// A message refused by a budget or a limit says which, and when to try again.
function refusal(res, error) {
  if (!error) return null;
  const wait = res.headers.get('Retry-After');
  if (error.code === 'budget_exceeded') {
    const which = { daily: 'your daily budget', monthly: 'your monthly budget', global: "the service's daily budget" }[error.scope];
    const held = error.reserved_usd > 0 ? `, ${formatSpend(error.reserved_usd)} held for replies still streaming` : '';
    return `Not sent: this message could cost more than what is left of ${which} (${formatSpend(error.spent_usd)} spent of ${formatSpend(error.limit_usd)}${held}). It resets at ${new Date(error.resets_at).toLocaleString()}.`;
  }
  if (error.code === 'rate_limited') {
    return error.limit === 'concurrent_replies'
      ? 'Not sent: you have too many replies streaming at once. Wait for one to finish.'
      : `Not sent: too many messages in a minute. Try again in ${wait || 'a few'} seconds.`;
  }
  if (error.code === 'server_busy') return `Not sent: the server is busy. Try again in ${wait || 'a few'} seconds.`;
  const model = error.model || 'this model';
  if (error.code === 'model_not_allowed') return `Not sent: ${model} is not one of the models you can choose here. Choose another one.`;
  if (error.code === 'unknown_model') return `Not sent: ${model} is no longer offered. Choose another model.`;
  if (error.code === 'model_cannot_read_images') {
    return `Not sent: ${modelName(model)} cannot read images. Choose a model marked Images, or remove the image.`;
  }
  if (error.code === 'model_cannot_read_files') {
    return `Not sent: ${modelName(model)} cannot read PDF files. Choose a model marked PDF, or remove the file.`;
  }
  if (error.code === 'upload_not_found') {
    return 'Not sent: an attached file is no longer kept (files not sent within a day are removed). Remove its chip and attach it again.';
  }
  if (error.code === 'reasoning_not_supported') return `Not sent: ${model} cannot reason step by step as asked. Choose a model marked Reasoning.`;
  if (error.code === 'message_too_long_for_model') {
    const window = error.context_length ? `, whose context holds ${Number(error.context_length).toLocaleString()} tokens` : '';
    return `Not sent: this message is too long for ${model}${window}. Shorten it, or choose a model with a larger context.`;
  }
  if (error.code === 'price_unknown') {
    return `Not sent: the price of ${error.model || 'this model'} is not known, and your spending has a limit, so this message cannot be priced in advance. Try again later, or ask the operator to choose another model.`;
  }
  return null;
}

// "$0.0123 of $0.02 spent today" (without a limit, "$0.0123 spent today"), and the month's
// when it has a limit. What was spent, not what is held for replies still streaming: that
// settles to their real cost, so counting it would make the figure go down as replies end.
async function loadUsage() {
  const usage = await api('GET', '/api/me/usage').catch(() => null);
  if (!usage) return;
  const line = (p, when) => (p.limit_usd == null
    ? `${formatSpend(p.spent_usd)} spent ${when}`
    : `${formatSpend(p.spent_usd)} of ${formatSpend(p.limit_usd)} spent ${when}`);
  const parts = [line(usage.day, 'today')];
  if (usage.month.limit_usd != null) parts.push(line(usage.month, 'this month'));
  els.usage.textContent = parts.join(' · ');
  els.usage.title = 'What your replies cost, not counting replies still streaming';
  els.usage.hidden = false;
}

// The server refused the page's sign-in: say what is missing where the composer was, and turn
// the composer off (it could only fail).
function signedOut(data) {
  if (state.signedOut) return;
  state.signedOut = true;
  auth.hasToken().then((given) => {
    els.signIn.textContent = window.Coach.signInMessage(data, { tokenGiven: given });
    els.signIn.hidden = false;
  });
  updateComposer();
}

function showError(err) {
  const message = err instanceof Error ? err.message : String(err);
  if (state.signedOut && message.startsWith('Sign-in needed')) return; // said once, in its place
  els.error.textContent = message;
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
  showExport(id);
}

// The open conversation's export links (plain links: the browser downloads the attachment).
function showExport(id) {
  els.exportLinks.hidden = !id;
  els.shareBox.hidden = true;
  if (!id) return;
  const url = `/api/conversations/${encodeURIComponent(id)}/export`;
  els.exportMarkdown.href = `${url}?format=markdown`;
  els.exportJson.href = `${url}?format=json`;
}

function formatTime(iso) {
  const when = new Date(iso);
  return Number.isNaN(when.getTime()) ? '' : when.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
}

function setHeader(title, total) {
  els.title.textContent = title || 'New conversation';
  els.total.textContent = formatUsd(total);
  els.rename.hidden = !state.openId;
}

// How far the end of the messages is from view, in pixels: inside the message list where it
// scrolls (desktop), plus how far below the composer it is where the page scrolls as a whole
// (phones).
function distanceToEnd() {
  const m = els.messages;
  const inner = m.scrollHeight - m.scrollTop - m.clientHeight;
  const page = m.getBoundingClientRect().bottom - els.form.getBoundingClientRect().top;
  return Math.max(0, inner) + Math.max(0, page);
}
function nearBottom() {
  return distanceToEnd() < 48;
}
// Brings the end of the messages into view, just above the composer, and follows from then on.
function scrollToEnd() {
  const m = els.messages;
  m.scrollTop = m.scrollHeight;
  const below = m.getBoundingClientRect().bottom - els.form.getBoundingClientRect().top;
  if (below > 0) window.scrollBy(0, below);
  state.follow = true;
  els.jump.hidden = true;
}
// After the messages grew: keep following, or offer the way back to the end.
function followEnd() {
  if (state.follow) scrollToEnd();
  else els.jump.hidden = !state.views.size || nearBottom();
}
// The reader scrolled: up, and the reply no longer pulls them; back at the end, it does again.
// Only a move up counts: the page's own scrolling only ever goes down, and a scroll event
// arrives a frame late, when the reply may have grown past "near the end" already.
let scrolledTo = 0;
function onScroll() {
  const at = window.scrollY + els.messages.scrollTop;
  const up = at < scrolledTo - 2;
  scrolledTo = at;
  if (nearBottom()) state.follow = true;
  else if (up) state.follow = false;
  els.jump.hidden = state.follow || !state.views.size;
}

// ---------- messages ----------

function createView(m) {
  const v = { id: m.id, raw: m.content || '', frame: 0 };
  v.badge = h('span', { class: 'badge', 'data-testid': 'message-status' });
  v.content = h('div', { class: 'msg-content', 'data-testid': 'message-content' });
  const created = m.created_at || new Date().toISOString();
  v.time = h('time', { datetime: created, title: created, 'data-testid': 'message-time' }, formatTime(created));
  v.error = h('p', { class: 'msg-error', 'data-testid': 'message-error', hidden: true });
  // The model's thinking: collapsed (the user opens it), hidden until there is some.
  v.thoughts = document.createTextNode(m.reasoning || '');
  v.thinkingLabel = h('summary', { 'data-testid': 'thinking-label' }, 'Thinking…');
  v.thinking = h('details', { class: 'msg-thinking', 'data-testid': 'thinking', hidden: !m.reasoning },
    v.thinkingLabel, h('div', { class: 'msg-thinking-text', 'data-testid': 'thinking-text' }, v.thoughts));
  v.citations = h('ol', { class: 'msg-citations', 'data-testid': 'citations', hidden: true });
  v.note = h('p', { class: 'msg-note', 'data-testid': 'finish-note', hidden: true });
  v.history = h('p', { class: 'msg-note msg-history', 'data-testid': 'history-note', hidden: true });
  v.el = h('article', {
    class: `msg msg-${m.role}`, 'data-testid': 'message', 'data-role': m.role, 'data-message-id': m.id,
  },
  h('header', { class: 'msg-head' }, h('span', { class: 'msg-role' }, ROLE_LABELS[m.role] || m.role), v.time, v.badge),
  v.thinking, v.content, v.note, v.history, v.citations, v.error);
  if (m.attachments?.length) {
    v.content.after(h('ul', { class: 'attachments msg-attachments', 'data-testid': 'message-attachments', 'aria-label': 'Attached files' },
      ...m.attachments.map((a) => attachmentItem(a))));
  }
  addMessageTools(v, m);
  for (const a of m.annotations || []) addCitation(v, a);

  if (m.role === 'assistant') {
    renderContent(v);
    v.content.setAttribute('aria-live', 'polite');
    v.model = h('span', { 'data-testid': 'message-model' });
    v.tokens = h('span', { 'data-testid': 'message-tokens', title: 'prompt + completion tokens' });
    v.cost = h('span', { 'data-testid': 'message-cost' });
    v.saved = h('span', { class: 'msg-saved', 'data-testid': 'message-cache-saved', hidden: true });
    v.el.append(h('footer', { class: 'msg-meta', 'data-testid': 'message-meta' }, v.model, v.tokens, v.cost, v.saved));
  } else {
    v.content.append(v.raw);
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
  if (v.model && 'model' in m && (m.model || !v.model.textContent)) {
    v.modelId = m.model;
    v.model.textContent = m.model || 'model —';
    v.model.title = m.model ? `Answered by ${modelName(m.model)}` : '';
  }
  // Earlier messages the model's context could not take (whole turns, oldest first).
  if ('history' in m) {
    const left = m.history?.left_out || 0;
    v.history.hidden = !left;
    v.history.textContent = left === 1
      ? "1 earlier message was not sent: it does not fit this model's context."
      : `${left} earlier messages were not sent: they do not fit this model's context.`;
  }
  if (v.tokens && 'usage' in m) {
    const u = m.usage;
    v.tokens.hidden = !u;
    if (u) v.tokens.textContent = `${u.prompt_tokens ?? '?'} prompt + ${u.completion_tokens ?? '?'} completion tokens`;
  }
  if (v.cost && 'cost_usd' in m) v.cost.textContent = formatUsd(m.cost_usd);
  if (v.saved && 'cache_saved_usd' in m) showCacheSaved(v.saved, m.cache_saved_usd, "this reply's prompt");
  if ('error' in m) {
    const msg = m.error && (ERROR_NOTES[m.error.code] || m.error.message || m.error.code);
    v.error.hidden = !msg;
    v.error.textContent = msg || '';
  }
}

// A reply's Markdown, rendered whole from its text so far (a half-streamed code fence or table
// renders as what it is so far, then as itself once complete).
function renderContent(v) {
  cancelAnimationFrame(v.frame);
  v.frame = 0;
  v.content.replaceChildren(markdown.render(v.raw));
}

// Deltas come many per frame: parse at most once per animation frame, not once per token, so a
// long answer does not cost a re-parse of all of it for every token.
function scheduleRender(v) {
  if (v.frame) return;
  v.frame = requestAnimationFrame(() => {
    renderContent(v);
    followEnd();
  });
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
  v.raw = '';
  renderContent(v);
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

// ---------- branches, regenerate and edit ----------

// Under each message: "‹ 2 / 3 ›" when it has siblings (other replies to the same question,
// other versions of the same question), and Regenerate (a reply) or Edit (a question).
function addMessageTools(v, m) {
  const tools = h('div', { class: 'msg-tools', 'data-testid': 'message-tools' });
  const ids = m.sibling_ids || [m.id];
  if (ids.length > 1) {
    const at = ids.indexOf(m.id);
    const go = (step) => () => activateMessage(ids[at + step]);
    tools.append(h('span', { class: 'branch', 'data-testid': 'branch-switcher' },
      h('button', {
        type: 'button', class: 'btn-icon', 'data-testid': 'branch-prev', 'aria-label': 'Previous version',
        disabled: at === 0, onclick: go(-1),
      }, '‹'),
      h('span', { 'data-testid': 'branch-position' }, `${at + 1} / ${ids.length}`),
      h('button', {
        type: 'button', class: 'btn-icon', 'data-testid': 'branch-next', 'aria-label': 'Next version',
        disabled: at === ids.length - 1, onclick: go(1),
      }, '›')));
  }
  if (m.role === 'assistant') {
    const copy = h('button', {
      type: 'button', class: 'btn-link', 'data-testid': 'copy-reply', 'aria-label': 'Copy this reply',
    }, 'Copy');
    copy.addEventListener('click', () => markdown.copyText(v.raw, copy));
    const again = h('button', {
      type: 'button', class: 'btn-link', 'data-testid': 'regenerate-with', 'aria-haspopup': 'dialog',
      'aria-expanded': 'false', hidden: !state.models.length,
    }, 'Regenerate with…');
    again.addEventListener('click', () => {
      if (busy()) return;
      picker.open({
        anchor: again, heading: 'Regenerate with', models: state.models, selected: v.modelId, placement: 'auto',
        onPick: (id) => regenerate(m.id, id),
      });
    });
    tools.append(copy, h('button', {
      type: 'button', class: 'btn-link', 'data-testid': 'regenerate', onclick: () => regenerate(m.id),
    }, 'Regenerate'), h('span', { class: 'model-choice' }, again));
    addFeedback(v, tools);
  } else if (m.role === 'user') {
    tools.append(h('button', {
      type: 'button', class: 'btn-link', 'data-testid': 'edit', onclick: () => startEdit(v),
    }, 'Edit'));
  }
  v.tools = tools;
  v.el.append(tools);
}

// ---------- feedback ----------

// Thumbs up or down under a reply, and then an optional comment; pressing the chosen thumb
// again takes the rating back. Stored per reply and user (PUT/DELETE /api/messages/{id}/feedback).
function addFeedback(v, tools) {
  const thumb = (rating, label, mark) => h('button', {
    type: 'button', class: 'btn-icon thumb', 'data-testid': `rate-${rating}`, 'aria-label': label,
    'aria-pressed': 'false', onclick: () => rate(v, rating),
  }, mark);
  v.thumbs = { up: thumb('up', 'Good reply', '👍'), down: thumb('down', 'Bad reply', '👎') };
  const input = h('input', {
    type: 'text', class: 'feedback-input', 'data-testid': 'feedback-comment-input', maxlength: 2000,
    'aria-label': 'What made this reply good or bad? (optional)', placeholder: 'Add a comment (optional)',
  });
  v.commentForm = h('form', { class: 'feedback-comment', 'data-testid': 'feedback-comment', hidden: true },
    input, h('button', { type: 'submit', class: 'btn', 'data-testid': 'feedback-save' }, 'Save'));
  v.commentInput = input;
  v.commentForm.addEventListener('submit', (e) => {
    e.preventDefault();
    saveRating(v, v.rating, input.value.trim() || null).then(() => { v.commentForm.hidden = true; });
  });
  v.feedbackNote = h('span', { class: 'feedback-note', 'data-testid': 'feedback-note', role: 'status' });
  tools.append(h('span', { class: 'feedback', role: 'group', 'aria-label': 'Rate this reply' },
    v.thumbs.up, v.thumbs.down), v.feedbackNote, v.commentForm);
}

function showRating(v, rating, comment) {
  v.rating = rating;
  v.comment = comment;
  for (const [name, button] of Object.entries(v.thumbs)) button.setAttribute('aria-pressed', String(name === rating));
  v.commentInput.value = comment || '';
}

async function saveRating(v, rating, comment) {
  try {
    await api('PUT', `/api/messages/${encodeURIComponent(v.id)}/feedback`, { rating, comment });
  } catch (err) {
    showError(err);
    return;
  }
  showRating(v, rating, comment);
  v.feedbackNote.textContent = 'Thanks for the feedback.';
}

async function rate(v, rating) {
  if (v.rating === rating) {
    try {
      await api('DELETE', `/api/messages/${encodeURIComponent(v.id)}/feedback`);
    } catch (err) {
      showError(err);
      return;
    }
    showRating(v, null, null);
    v.commentForm.hidden = true;
    v.feedbackNote.textContent = 'Rating removed.';
    return;
  }
  await saveRating(v, rating, v.comment || null);
  if (v.rating === rating) {
    v.commentForm.hidden = false;
    v.commentInput.focus();
  }
}

// The caller's ratings of the open conversation's replies, every branch's.
async function loadFeedback(conversationId, seq) {
  const data = await api('GET', `/api/conversations/${encodeURIComponent(conversationId)}/feedback`).catch(() => null);
  if (!data || seq !== state.navSeq) return;
  for (const [id, f] of Object.entries(data.feedback || {})) {
    const v = state.views.get(id);
    if (v?.thumbs) showRating(v, f.rating, f.comment);
  }
}

function busy() {
  return state.sending || state.streamingId != null;
}

// A regenerate or an edit answers like a new turn (202); the conversation then shows the new
// branch, whose reply is streaming: opening it again resumes that reply from its start.
async function branchOff(url, body) {
  if (busy() || !state.openId) return;
  clearError();
  state.sending = true;
  updateComposer();
  try {
    await api('POST', url, body);
  } catch (err) {
    showError(err);
    return;
  } finally {
    state.sending = false;
    updateComposer();
  }
  await openConversation(state.openId);
}

// `model`: "Regenerate with…" a model of the list; without it, the conversation's.
function regenerate(messageId, model) {
  return branchOff(`/api/messages/${encodeURIComponent(messageId)}/regenerate`, model ? { model } : undefined);
}

function startEdit(v) {
  if (busy() || v.editor) return;
  // Edited at the composer's width (the bubble widens while its editor is open), its tools
  // hidden meanwhile: Save and Cancel are the only ways out.
  const input = h('textarea', { class: 'msg-edit-input', 'data-testid': 'edit-input', rows: 4, 'aria-label': 'Edit message' });
  input.value = v.raw;
  const close = () => {
    v.editor.remove();
    v.editor = null;
    v.content.hidden = false;
    v.tools.hidden = false;
    v.el.classList.remove('msg-editing');
  };
  const save = () => {
    const text = input.value.trim();
    if (!text) return;
    close();
    branchOff(`/api/messages/${encodeURIComponent(v.id)}/edit`, state.model ? { message: text, model: state.model } : { message: text });
  };
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); save(); }
    if (e.key === 'Escape') close();
  });
  v.editor = h('div', { class: 'msg-edit', 'data-testid': 'edit-form' }, input,
    h('div', { class: 'msg-edit-actions' },
      h('button', { type: 'button', class: 'btn btn-primary', 'data-testid': 'edit-save', onclick: save }, 'Save'),
      h('button', { type: 'button', class: 'btn', 'data-testid': 'edit-cancel', onclick: close }, 'Cancel')));
  v.content.hidden = true;
  v.tools.hidden = true;
  v.el.classList.add('msg-editing');
  v.content.after(v.editor);
  input.focus();
}

async function activateMessage(messageId) {
  if (busy() || !messageId) return;
  clearError();
  const seq = ++state.navSeq;
  let conv;
  try {
    conv = await api('POST', `/api/messages/${encodeURIComponent(messageId)}/activate`);
  } catch (err) {
    showError(err);
    return;
  }
  if (seq === state.navSeq) await showConversation(conv, { seq });
}

// The titler names a conversation after its first complete reply (a stopped or failed one
// does not count), off the reply's path: read the list again a few times until it is titled.
async function refreshTitle(id, delays = [300, 1000, 2500, 5000]) {
  for (const ms of delays) {
    await new Promise((resolve) => setTimeout(resolve, ms));
    await loadConversations();
    if (state.conversations.find((c) => c.id === id)?.titled !== false) return;
  }
}

// ---------- streaming a reply ----------

function updateComposer() {
  const busy = state.sending || state.streamingId != null || state.signedOut;
  els.input.disabled = busy;
  els.send.disabled = busy;
  els.attach.disabled = state.signedOut;
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

  const conversationId = state.openId;
  const finish = (status) => {
    const refocus = document.activeElement === els.stop || document.activeElement === document.body;
    state.stream = null;
    state.streamingId = null;
    updateComposer();
    if (refocus) els.input.focus({ preventScroll: true });
    loadConversations();
    loadUsage();
    loadModels();
    const listed = state.conversations.find((c) => c.id === conversationId);
    if (status === 'complete' && conversationId && listed?.titled !== true) refreshTitle(conversationId);
  };

  state.stream = window.StreamchatStream.open(url, {
    open: () => { if (v.el.dataset.status === 'streaming') updateView(v, { status: 'streaming' }); },
    reconnecting: () => { v.badge.textContent = STATUS_LABELS.reconnecting; },
    meta: (d) => updateView(v, { model: d.model, history: d.history ?? null }),
    reasoning: (text) => {
      appendThought(v, text);
      followEnd();
    },
    delta: (text) => {
      v.raw += text;
      scheduleRender(v);
    },
    annotation: (a) => addCitation(v, a),
    done: (d) => {
      renderContent(v); // whole now, even where frames are not drawn (a background tab)
      const costKnown = d.cost_usd != null;
      const status = d.status || (d.finish_reason === 'stopped' ? 'stopped' : 'complete');
      updateView(v, {
        status,
        finish_reason: d.finish_reason,
        // Without a cost the run saw no usage chunk either, so its token counts are not real.
        model: d.model, usage: costKnown ? d.usage ?? null : null, cost_usd: d.cost_usd ?? null,
        cache_saved_usd: d.cache_saved_usd ?? null,
      });
      followEnd();
      finish(status);
      if (!costKnown) refreshCost(v, state.openId);
      else if (d.cache_saved_usd) refreshSaved(conversationId);
    },
    failed: (d) => {
      renderContent(v);
      updateView(v, { status: d.status || 'error', error: { code: d.code, message: d.message } });
      followEnd();
      finish(d.status || 'error');
    },
    // Ended without a terminal event (e.g. 204: already finished); the server has the final state.
    closed: async () => {
      const id = state.openId;
      finish(null);
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
      updateView(v, { model: m.model, usage: m.usage, cost_usd: m.cost_usd, cache_saved_usd: m.cache_saved_usd });
      setHeader(conv.title, conv.total_cost_usd);
      showConversationSaved(conv);
      loadConversations();
      return;
    }
  }
}

// The header's "saved by caching": the conversation's total (`total_cache_saved_usd`, over the
// same generations as its total cost), from its read only (the list has no such column).
function showConversationSaved(conv) {
  showCacheSaved(els.saved, conv?.total_cache_saved_usd, "this conversation's prompts");
}

// A reply's `done` said caching changed what it cost: the conversation's total changed too.
async function refreshSaved(conversationId) {
  const conv = await api('GET', `/api/conversations/${encodeURIComponent(conversationId)}`).catch(() => null);
  if (conv && state.openId === conversationId) showConversationSaved(conv);
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
  if (state.sending || state.streamingId) return;
  if (!text) {
    // A message is words: files alone are not sent (a pasted screenshot, then Enter).
    if (state.attachments.length) showAttachError('Add a few words to go with the files, then send.');
    return;
  }
  clearError();
  if (state.attachments.some((a) => a.status === 'uploading')) {
    showAttachError('Not sent yet: wait until the files have finished uploading.');
    return;
  }
  const attached = state.attachments.map((a) => a.data);
  // Read before disabling the textarea, which drops focus to <body>.
  const hadFocus = els.form.contains(document.activeElement);
  state.sending = true;
  updateComposer();
  const seq = state.navSeq;
  const body = { message: text };
  if (state.openId) body.conversation_id = state.openId;
  if (state.model) body.model = state.model;
  if (attached.length) body.attachments = attached.map((a) => a.id);

  let res;
  try {
    res = await api('POST', '/api/chat/messages', body);
  } catch (err) {
    state.sending = false;
    updateComposer();
    showError(err);
    els.input.focus();
    loadUsage();
    loadModels();
    return;
  }
  state.sending = false;
  els.input.value = '';
  // Sent: the files belong to the message now (not deleted), and leave the composer.
  state.attachments = state.attachments.filter((a) => !attached.includes(a.data));
  renderAttachments();
  showAttachError('');
  updateComposer();
  // The user navigated away while the request was in flight; the reply still lands in its conversation.
  if (seq !== state.navSeq) { loadConversations(); return; }

  if (state.openId !== res.conversation_id) {
    state.openId = res.conversation_id;
    setHash(state.openId);
    clearMessages();
    setHeader(null, 0);
    showConversationSaved(null);
  }
  appendMessage({ id: res.user_message_id, role: 'user', content: text, status: 'complete', attachments: attached });
  const v = appendMessage({
    id: res.message_id, role: 'assistant', content: '', status: 'streaming',
    model: null, usage: null, cost_usd: null, error: null,
  });
  scrollToEnd();
  startStream(res.stream_url, v, { focusStop: hadFocus });
  loadConversations();
}

// ---------- the model ----------

function modelName(id) {
  return state.models.find((m) => m.id === id)?.name || id;
}

// The model the next message goes to: the conversation's (null: the agent's default).
function showModel(id) {
  state.model = id;
  const shown = id || state.defaultModel;
  els.modelName.textContent = shown ? modelName(shown) : '';
  els.modelButton.title = shown ? `Replies come from ${shown}${id ? '' : ' (the default)'}. Change the model` : '';
  warnAttachments();
}

// The list, again after each reply: what the budgets leave changes which models can be afforded.
async function loadModels() {
  const data = await api('GET', '/api/agents/chat/models').catch(() => null);
  if (!data) return;
  state.models = data.models || [];
  state.defaultModel = data.default_model;
  els.modelButton.hidden = !state.models.length;
  for (const b of els.messages.querySelectorAll('[data-testid="regenerate-with"]')) b.hidden = !state.models.length;
  showModel(state.model);
}

els.modelButton.addEventListener('click', () => picker.open({
  anchor: els.modelButton,
  heading: 'Model for this conversation',
  models: state.models,
  selected: state.model || state.defaultModel,
  onPick: (id) => {
    // The default is sent as no model: the conversation then follows the agent's default.
    showModel(id === state.defaultModel && !state.openId ? null : id);
    clearError(); // a refusal for the model before is answered by the choice
    els.input.focus();
  },
}));

// ---------- attachments ----------

// One attachment as a chip: a thumbnail (an image, from its content URL) or a PDF's mark, its
// name, size and pages. On the composer it has a remove button and may still be uploading.
function attachmentItem(a, { onRemove = null, uploading = false } = {}) {
  const image = uploads.isImage(a.type);
  const name = a.name || 'file';
  let mark;
  if (image && a.id) {
    const img = h('img', {
      class: 'att-thumb', alt: name, 'data-testid': 'attachment-thumbnail', decoding: 'async',
      width: a.width || null, height: a.height || null,
    });
    uploads.imageSource(auth, a.id).then((src) => { img.src = src; }, () => img.classList.add('att-thumb-missing'));
    // On a message, the thumbnail opens the image at the size of the screen.
    mark = onRemove ? img : h('button', {
      type: 'button', class: 'att-view', 'data-testid': 'attachment-view', 'aria-label': `View ${name}`,
      onclick: () => viewImage(img, name),
    }, img);
  } else {
    mark = h('span', { class: image ? 'att-icon att-icon-image' : 'att-icon', 'aria-hidden': 'true' }, image ? 'IMG' : 'PDF');
  }
  const facts = uploading ? 'Uploading…' : uploads.facts(a);
  const item = h('li', {
    class: `att ${image ? 'att-image' : 'att-file'}${uploading ? ' att-uploading' : ''}`,
    'data-testid': 'attachment', 'data-type': a.type || null, 'data-attachment-id': a.id || null,
    'aria-busy': uploading ? 'true' : null,
  },
  mark,
  h('span', { class: 'att-text' },
    h('span', { class: 'att-name', 'data-testid': 'attachment-name', title: name }, name),
    h('span', { class: 'att-facts', 'data-testid': 'attachment-facts' }, facts)));
  if (onRemove) {
    item.append(h('button', {
      type: 'button', class: 'btn-icon att-remove', 'data-testid': 'attachment-remove',
      'aria-label': `Remove ${name}`, title: 'Remove', onclick: onRemove,
    }, '×'));
  }
  return item;
}

// One image, as large as the screen allows, in a modal dialog: Escape, Close or a click
// beside it closes it, and the focus goes back to the thumbnail.
let viewer = null;
function viewImage(thumb, name) {
  if (!viewer) {
    const img = h('img', { class: 'viewer-image', 'data-testid': 'image-viewer-image', alt: '' });
    const caption = h('p', { class: 'viewer-caption', id: 'image-viewer-caption' });
    const close = h('button', { type: 'button', class: 'btn viewer-close', 'data-testid': 'image-viewer-close' }, 'Close');
    const dialog = h('dialog', { class: 'viewer', 'data-testid': 'image-viewer', 'aria-labelledby': 'image-viewer-caption' },
      h('div', { class: 'viewer-bar' }, caption, close), img);
    close.addEventListener('click', () => dialog.close());
    dialog.addEventListener('click', (e) => { if (e.target === dialog) dialog.close(); });
    document.body.append(dialog);
    viewer = { dialog, img, caption, close };
  }
  viewer.img.src = thumb.currentSrc || thumb.src;
  viewer.img.alt = name;
  viewer.caption.textContent = name;
  viewer.dialog.showModal();
  viewer.close.focus();
}

function showAttachError(message) {
  els.attachError.textContent = message || '';
  els.attachError.hidden = !message;
}

// The composer's chips, drawn again from state.attachments.
function renderAttachments() {
  const items = state.attachments.map((a) => {
    const shown = a.data || { name: a.file.name, type: a.file.type, size: a.file.size };
    return attachmentItem(shown, { onRemove: () => removeAttachment(a), uploading: a.status === 'uploading' });
  });
  els.attachments.replaceChildren(...items);
  els.attachments.hidden = !items.length;
  warnAttachments();
}

// Before sending: an image for a model that cannot read images (the server would refuse it).
// Not PDFs: the server has OpenRouter's parser read them for such models, unless its operator
// turned that off (PDF_ENGINE), and then its refusal says so.
function warnAttachments() {
  const id = state.model || state.defaultModel;
  const model = state.models.find((m) => m.id === id);
  const images = state.attachments.some((a) => uploads.isImage(a.data?.type || a.file.type));
  const blind = images && model && model.capabilities && !model.capabilities.image_input;
  els.attachWarning.textContent = blind
    ? `${model.name || model.id} cannot read images: choose a model marked Images before sending, or remove the image.`
    : '';
  els.attachWarning.hidden = !blind;
}

// Each file uploads as soon as it is chosen, dropped or pasted; a refused one leaves no chip,
// and says why beside the composer.
function addFiles(files) {
  if (state.signedOut) return;
  const list = [...files];
  if (!list.length) return;
  showAttachError('');
  const room = uploads.MAX_FILES - state.attachments.length;
  if (list.length > room) {
    showAttachError(`A message takes up to ${uploads.MAX_FILES} files: ${list.length - Math.max(room, 0)} of these were not attached.`);
  }
  for (const file of list.slice(0, Math.max(room, 0))) {
    const a = { file, status: 'uploading', data: null, controller: new AbortController() };
    state.attachments.push(a);
    uploads.upload(auth, '/api/uploads', file, { signal: a.controller.signal }).then((data) => {
      a.status = 'ready';
      a.data = data;
      if (state.attachments.includes(a)) renderAttachments();
    }, (err) => {
      if (err?.name === 'AbortError') return; // removed while it uploaded
      const at = state.attachments.indexOf(a);
      if (at >= 0) state.attachments.splice(at, 1);
      renderAttachments();
      if (err?.status === 401) {
        signedOut(err.data);
        return;
      }
      showAttachError(err.message);
    });
  }
  renderAttachments();
}

// Removed before sending: the upload is deleted (or its upload cancelled).
async function removeAttachment(a) {
  const at = state.attachments.indexOf(a);
  if (at < 0) return;
  state.attachments.splice(at, 1);
  const focusNext = els.attachments.contains(document.activeElement);
  renderAttachments();
  showAttachError('');
  // The focus goes to the chip that took its place (or the one before it), else the box.
  const buttons = els.attachments.querySelectorAll('.att-remove');
  if (focusNext) (buttons[Math.min(at, buttons.length - 1)] || els.input).focus();
  if (a.status === 'uploading') {
    a.controller.abort();
    return;
  }
  try {
    await uploads.remove(auth, a.data.id);
  } catch (err) {
    showAttachError(err.message);
  }
}

els.attach.addEventListener('click', () => els.attachInput.click());
els.attachInput.accept = uploads.ACCEPT;
els.attachInput.addEventListener('change', () => {
  addFiles(els.attachInput.files);
  els.attachInput.value = ''; // the same file may be chosen again
});
// A pasted image (a screenshot) is attached; text pasted with it still goes in the box.
els.input.addEventListener('paste', (e) => {
  const files = [...(e.clipboardData?.files || [])];
  if (!files.length) return;
  if (!e.clipboardData.types.includes('text/plain')) e.preventDefault();
  addFiles(files);
});
// Files dropped anywhere on the chat go to the composer, which shows where they will land.
const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes('Files');
els.chat.addEventListener('dragover', (e) => {
  if (!hasFiles(e) || state.signedOut) return;
  e.preventDefault();
  e.dataTransfer.dropEffect = 'copy';
  els.form.classList.add('drop-target');
});
els.chat.addEventListener('dragleave', (e) => {
  if (!els.chat.contains(e.relatedTarget)) els.form.classList.remove('drop-target');
});
els.chat.addEventListener('drop', (e) => {
  if (!hasFiles(e)) return;
  e.preventDefault();
  els.form.classList.remove('drop-target');
  addFiles(e.dataTransfer.files);
});
// A file dropped beside the chat must not replace the page with itself.
window.addEventListener('dragover', (e) => { if (hasFiles(e)) e.preventDefault(); });
window.addEventListener('drop', (e) => { if (hasFiles(e)) e.preventDefault(); });

// ---------- conversations ----------

// The list comes a page at a time: the next page loads when the end of the list (this sentinel)
// scrolls within 200px of view. Observing again after each render makes the observer report
// where the sentinel is now, so pages keep coming while it stays in view (a tall screen).
const listEnd = h('li', { class: 'conv-more', 'data-testid': 'conversation-list-end', 'aria-hidden': 'true' });
const listEndWatcher = new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) loadMore();
}, { root: els.list, rootMargin: '0px 0px 200px 0px' });

function renderList() {
  // Not under a title being typed in the list: the list is drawn again once it is saved.
  if (els.list.querySelector('.title-input')) return;
  const items = state.conversations.filter((c) => !state.deleting.has(c.id)).map((c) => {
    const title = c.title || 'New conversation';
    const active = c.id === state.openId;
    const item = h('li', { class: active ? 'conv active' : 'conv', 'data-testid': 'conversation-item', 'data-conversation-id': c.id });
    const open = h('button', {
      type: 'button', class: 'conv-open', 'aria-current': active ? 'true' : null,
      onclick: () => openConversation(c.id),
    },
    h('span', { class: 'conv-title', 'data-testid': 'conversation-title' }, title),
    h('span', { class: 'conv-cost', 'data-testid': 'conversation-cost' }, formatUsd(c.total_cost_usd)));
    item.append(open,
      h('button', {
        type: 'button', class: 'conv-action', 'data-testid': 'rename-conversation',
        'aria-label': `Rename conversation “${title}”`, title: 'Rename',
        onclick: () => editTitle(open, c.id, title),
      }, '✎'),
      h('button', {
        type: 'button', class: 'conv-action conv-delete', 'data-testid': 'delete-conversation',
        'aria-label': `Delete conversation “${title}”`, title: 'Delete conversation',
        onclick: () => deleteConversation(c.id, title),
      }, '×'));
    return item;
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
    if (open && !els.title.hidden) setHeader(open.title, open.total_cost_usd);
  } catch (err) {
    showError(err);
  }
}

async function openConversation(id, { resume = true } = {}) {
  closeStream();
  clearError();
  if (id !== state.openId) coach?.reset();
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
  await showConversation(conv, { resume, seq });
  return conv;
}

// Shows a conversation's messages (the branch it shows), resuming a reply still streaming;
// `seq` is the navigation that asked for it (a later one drops the resume).
async function showConversation(conv, { resume = true, seq = state.navSeq } = {}) {
  closeStream();
  clearMessages();
  setHeader(conv.title, conv.total_cost_usd);
  showConversationSaved(conv);
  showModel(conv.model ?? null);
  const messages = conv.messages || [];
  for (const m of messages) appendMessage(m);
  scrollToEnd(); // a conversation opens at its latest message
  loadFeedback(conv.id, seq);

  // After a reload mid-reply: replay the reply from the start into a cleared message.
  const last = [...messages].reverse().find((m) => m.role === 'assistant');
  if (resume && last?.status === 'streaming') {
    const v = state.views.get(last.id);
    clearReply(v);
    // No stream_url here (that was the page before the reload): the user's own token, in the URL.
    const url = await auth.streamUrl(`/api/messages/${encodeURIComponent(last.id)}/stream?last_event_id=0`);
    if (seq !== state.navSeq) return;
    startStream(url, v);
  }
}

function newChat({ focus = true } = {}) {
  closeStream();
  clearError();
  coach?.reset();
  state.navSeq++;
  state.openId = null;
  setHash(null);
  clearMessages();
  setHeader(null, null);
  showConversationSaved(null);
  showModel(null); // a new chat starts on the agent's default
  renderList();
  if (focus) els.input.focus();
}

// A deletion waits a few seconds, the conversation gone from the list meanwhile, with Undo;
// then the server deletes it. Leaving the page sends the ones still waiting.
const UNDO_MS = 6000;
function deleteConversation(id, title) {
  clearError();
  if (id === state.openId) newChat({ focus: false });
  const send = () => {
    clearTimeout(pending.timer);
    state.deleting.delete(id);
    if (!state.deleting.size) els.undo.hidden = true;
    return api('DELETE', `/api/conversations/${encodeURIComponent(id)}`).then(loadConversations, showError);
  };
  const pending = { send, timer: setTimeout(send, UNDO_MS), title };
  state.deleting.set(id, pending);
  showUndo(id, title);
  renderList();
  els.newChat.focus({ preventScroll: true }); // the focused delete button is gone
}

function showUndo(id, title) {
  const undo = h('button', { type: 'button', class: 'btn-link', 'data-testid': 'undo-delete' }, 'Undo');
  undo.addEventListener('click', () => {
    const pending = state.deleting.get(id);
    if (!pending) return;
    clearTimeout(pending.timer);
    state.deleting.delete(id);
    els.undo.hidden = true;
    renderList();
    openConversation(id);
  });
  els.undo.replaceChildren(h('span', {}, `Deleted “${title}”.`), ' ', undo);
  els.undo.hidden = false;
}

// The conversation's title as a text box in place (the header's, or a list item's): Enter or
// leaving it saves, Escape keeps the old one. A title the user gives is never replaced by
// the titler's.
function editTitle(shown, id, title) {
  const input = h('input', {
    type: 'text', class: 'title-input', 'data-testid': 'title-input', maxlength: 200,
    'aria-label': 'Conversation title',
  });
  input.value = title;
  let done = false;
  const close = async (save) => {
    if (done) return;
    done = true;
    const text = input.value.trim();
    input.replaceWith(shown);
    shown.hidden = false;
    if (!save || !text || text === title) {
      renderList();
      return;
    }
    try {
      await api('PATCH', `/api/conversations/${encodeURIComponent(id)}`, { title: text });
    } catch (err) {
      showError(err);
    }
    if (id === state.openId) els.title.textContent = text;
    await loadConversations();
  };
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); close(true); }
    if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); close(false); }
  });
  input.addEventListener('blur', () => close(true));
  shown.hidden = true;
  shown.after(input);
  input.focus();
  input.select();
}

// ---------- search ----------

// Results replace the list while the box has text; each names a conversation and shows the
// best-matching message's snippet: the server's pieces alternate plain text and matches, made
// text nodes and <mark>s here, so nothing from the server is parsed as HTML.
async function runSearch() {
  clearTimeout(state.searchTimer);
  const q = els.searchInput.value.trim();
  const seq = ++state.searchSeq;
  if (!q) {
    els.results.hidden = true;
    els.list.hidden = false;
    return;
  }
  let data;
  try {
    data = await api('GET', `/api/conversations?agent=chat&limit=20&q=${encodeURIComponent(q)}`);
  } catch (err) {
    if (seq === state.searchSeq) showError(err);
    return;
  }
  if (seq !== state.searchSeq) return;
  const items = (data?.conversations || []).map((r) => h('li', {
    class: 'conv', 'data-testid': 'search-result', 'data-conversation-id': r.id,
  }, h('button', {
    type: 'button', class: 'conv-open', onclick: () => openFound(r.id, r.message_id),
  },
  h('span', { class: 'conv-title', 'data-testid': 'search-result-title' }, r.title || 'New conversation'),
  h('span', { class: 'search-snippet', 'data-testid': 'search-snippet' },
    ...(r.snippet || []).map((piece, i) => (i % 2 ? h('mark', {}, piece) : piece))))));
  if (!items.length) items.push(h('li', { class: 'conv-empty', 'data-testid': 'search-empty' }, 'No messages match.'));
  els.results.replaceChildren(...items);
  els.results.hidden = false;
  els.list.hidden = true;
}

async function openFound(conversationId, messageId) {
  const conv = await openConversation(conversationId);
  if (!conv) return;
  // Search reads every branch: a match on one the conversation does not show switches to it.
  if (!state.views.has(messageId) && !busy()) await activateMessage(messageId);
  const v = state.views.get(messageId);
  if (!v) return;
  for (const other of els.messages.querySelectorAll('.msg-found')) other.classList.remove('msg-found');
  v.el.classList.add('msg-found');
  v.el.scrollIntoView({ block: 'center' });
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
// Esc stops the reply streaming (not while a box that uses Esc itself has the focus).
document.addEventListener('keydown', (e) => {
  if (e.key !== 'Escape' || !state.streamingId) return;
  if (e.target.closest?.('.msg-edit, .search, .title-input, .coach-panel, .viewer')) return;
  e.preventDefault();
  stopReply();
});
els.messages.addEventListener('scroll', onScroll, { passive: true });
// The layout moves under a reader who follows (the list above the chat loads on a phone, Stop
// takes room in the composer): keep the end in view.
const keepEnd = new ResizeObserver(() => { if (state.follow && state.views.size) scrollToEnd(); });
for (const el of [document.body, els.messages, els.list, els.form]) keepEnd.observe(el);
window.addEventListener('scroll', onScroll, { passive: true });
els.jump.addEventListener('click', () => { scrollToEnd(); els.input.focus({ preventScroll: true }); });
// A read-only link to the branch shown now (a new one takes the place of the one before).
els.share.addEventListener('click', async () => {
  if (!state.openId) return;
  let made;
  try {
    made = await api('POST', `/api/conversations/${encodeURIComponent(state.openId)}/share`);
  } catch (err) {
    showError(err);
    return;
  }
  els.shareUrl.value = new URL(made.url, location.href).href;
  els.shareBox.hidden = false;
  els.shareUrl.focus();
  els.shareUrl.select();
});
els.shareCopy.addEventListener('click', () => markdown.copyText(els.shareUrl.value, els.shareCopy));
els.shareRevoke.addEventListener('click', async () => {
  if (!state.openId) return;
  try {
    await api('DELETE', `/api/conversations/${encodeURIComponent(state.openId)}/share`);
  } catch (err) {
    showError(err);
    return;
  }
  els.shareBox.hidden = true;
  els.share.focus();
});
els.rename.addEventListener('click', () => {
  if (state.openId) editTitle(els.title, state.openId, els.title.textContent);
});
// Leaving the page: the deletions still waiting out their undo go now (keepalive outlives it).
window.addEventListener('pagehide', () => {
  const t = auth.peek();
  for (const [id] of state.deleting) {
    fetch(`/api/conversations/${encodeURIComponent(id)}`, {
      method: 'DELETE', keepalive: true, headers: t ? { Authorization: `Bearer ${t}` } : {},
    });
  }
});
els.searchForm.addEventListener('submit', (e) => { e.preventDefault(); runSearch(); });
// While typing, search once the typing pauses rather than for every key.
els.searchInput.addEventListener('input', () => {
  clearTimeout(state.searchTimer);
  state.searchTimer = setTimeout(runSearch, 250);
});
els.searchInput.addEventListener('keydown', (e) => {
  if (e.key === 'Escape') {
    els.searchInput.value = '';
    runSearch();
  }
});
els.newChat.addEventListener('click', () => newChat());
window.addEventListener('hashchange', () => {
  const id = hashId();
  if (id && id !== state.openId) openConversation(id);
});

coach = window.Coach.mount(document.getElementById('coach'), { getConversationId: () => state.openId, session: auth });

loadConversations();
loadUsage();
loadModels();
const initial = hashId();
if (initial) openConversation(initial);
