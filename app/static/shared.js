'use strict';
// A shared conversation, read-only (GET /api/shared/{token}): no sign-in, no token sent, nothing
// loaded from elsewhere (the page's CSP says so too). Replies are Markdown (markdown.js, images
// as links), questions plain text.
(async () => {
  const $ = (sel) => document.querySelector(sel);
  const token = decodeURIComponent(location.pathname.split('/').pop() || '');
  const fail = (text) => {
    $('[data-testid="app-error"]').textContent = text;
    $('[data-testid="app-error"]').hidden = false;
  };
  let res;
  try {
    res = await fetch(`/api/shared/${encodeURIComponent(token)}`, { credentials: 'omit' });
  } catch {
    fail('Could not reach the server. Check your connection and try again.');
    return;
  }
  if (!res.ok) {
    fail(res.status === 404 ? 'This link does not lead anywhere: it was never made, or its owner took it back.' : `Could not load it (HTTP ${res.status}).`);
    return;
  }
  const data = await res.json();
  document.title = `${data.title} (shared)`;
  $('[data-testid="chat-title"]').textContent = data.title;
  const when = (iso) => new Date(iso).toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
  $('[data-testid="shared-at"]').textContent = `Shared ${when(data.shared_at)}`;
  const list = $('[data-testid="message-list"]');
  for (const m of data.messages) {
    const content = document.createElement('div');
    content.className = 'msg-content';
    content.dataset.testid = 'message-content';
    if (m.role === 'assistant') content.append(window.StreamchatMarkdown.render(m.content));
    else content.textContent = m.content;
    const head = document.createElement('header');
    head.className = 'msg-head';
    const role = document.createElement('span');
    role.className = 'msg-role';
    role.textContent = m.role === 'user' ? 'Question' : 'Answer';
    const time = document.createElement('time');
    time.dateTime = m.created_at;
    time.textContent = when(m.created_at);
    head.append(role, time);
    const article = document.createElement('article');
    article.className = `msg msg-${m.role}`;
    article.dataset.testid = 'message';
    article.dataset.role = m.role;
    article.append(head, content);
    list.append(article);
  }
})();
