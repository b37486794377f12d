// Attachments, shared by the chat page (app.js) and the coach widget (coach.js): one upload to
// POST /api/uploads (multipart, field `file`), its refusals said in plain words, sizes as
// people read them, and the source of an image's thumbnail. Each UI draws its own chips.
(() => {
  'use strict';
  if (window.StreamchatUploads) return; // loaded twice (the page and an embedded widget)

  // What the server keeps (it recognises a file by its bytes: these are only the chooser's
  // filter and the words of a refusal).
  const IMAGE_TYPES = ['image/png', 'image/jpeg', 'image/webp', 'image/gif'];
  const ACCEPT = [...IMAGE_TYPES, 'application/pdf'].join(',');
  const KINDS = 'PNG, JPEG, WebP or GIF images, or PDF files';
  const MAX_FILES = 10; // attachments on one message

  const isImage = (type) => IMAGE_TYPES.includes(type);

  // 980 bytes, 34 KB, 1.2 MB.
  function formatSize(bytes) {
    const n = Number(bytes);
    if (!Number.isFinite(n) || n < 0) return '';
    if (n < 1000) return `${n} bytes`;
    if (n < 1_000_000) return `${Math.round(n / 1000)} KB`;
    return `${Number((n / 1_000_000).toFixed(1))} MB`;
  }

  // "3 pages · 1.2 MB", "1280 × 720 · 34 KB": what a chip says under the name.
  function facts(a) {
    const parts = [];
    if (a.pages) parts.push(a.pages === 1 ? '1 page' : `${a.pages} pages`);
    parts.push(formatSize(a.size));
    return parts.filter(Boolean).join(' · ');
  }

  // A refusal of one file, in a sentence that says what to do.
  function refusal(name, status, error) {
    const code = error?.code;
    const file = `“${name}” was not attached`;
    if (status === 415 || code === 'unsupported_media_type') {
      return `${file}: it is not a file the assistant can read. Attach ${KINDS}.`;
    }
    if (code === 'upload_quota_exceeded') {
      const used = error.quota_bytes ? ` (${formatSize(error.used_bytes)} of your ${formatSize(error.quota_bytes)} used)` : '';
      return `${file}: it does not fit in your space for attachments${used}. Delete conversations with files you no longer need, then try again.`;
    }
    if (status === 413 || code === 'upload_too_large') {
      const limit = error?.limit_bytes ? ` (${formatSize(error.limit_bytes)})` : '';
      return `${file}: it is larger than a file may be${limit}. Attach a smaller one.`;
    }
    return `${file}: ${error?.message || `the server answered HTTP ${status}`}.`;
  }

  // Thrown by `upload`: `message` is the sentence to show; `status` and `code` are the server's,
  // `signIn` set when the answer was a 401 (the page handles those as it does any request's).
  class UploadError extends Error {
    constructor(message, { status = 0, code = null, data = null } = {}) {
      super(message);
      this.status = status;
      this.code = code;
      this.data = data;
    }
  }

  // Sends one file; resolves to the server's description of it ({id, type, name, size, ...}).
  // `auth` is the page's session (coach.js: session()), `url` the endpoint, `signal` aborts.
  async function upload(auth, url, file, { signal } = {}) {
    const form = new FormData();
    form.append('file', file, file.name || 'pasted');
    let res;
    try {
      // No Content-Type of ours: the browser writes the multipart boundary.
      res = await auth.fetch(url, { method: 'POST', headers: { Accept: 'application/json' }, body: form, signal });
    } catch (err) {
      if (err?.name === 'AbortError') throw err;
      throw new UploadError(`“${file.name}” was not attached: the server could not be reached. Check your connection and try again.`);
    }
    const data = await res.json().catch(() => null);
    if (res.ok && data?.id) return data;
    throw new UploadError(refusal(file.name, res.status, data?.error), { status: res.status, code: data?.error?.code, data });
  }

  // The upload's bytes, where an <img> can show them. The page's CSP allows images from its own
  // origin and data: URLs only; an <img> cannot send the Authorization header, so where the
  // page has a token the bytes are fetched with it and shown as a data: URL (never the token
  // in a URL). `base` is the API's origin (the widget may live on another page's).
  const sources = new Map();
  function imageSource(auth, id, base = location.href) {
    const url = new URL(`/api/uploads/${encodeURIComponent(id)}/content`, base).href;
    if (!sources.has(url)) {
      sources.set(url, (async () => {
        if (!(await auth.hasToken())) return url;
        const res = await auth.fetch(url, {});
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        const blob = await res.blob();
        return new Promise((resolve, reject) => {
          const reader = new FileReader();
          reader.onload = () => resolve(reader.result);
          reader.onerror = () => reject(reader.error);
          reader.readAsDataURL(blob);
        });
      })().catch((err) => { sources.delete(url); throw err; }));
    }
    return sources.get(url);
  }

  // Forgets an upload (removed before sending); a failure is the caller's to say.
  async function remove(auth, id, base = location.href) {
    const url = new URL(`/api/uploads/${encodeURIComponent(id)}`, base).href;
    const res = await auth.fetch(url, { method: 'DELETE', headers: { Accept: 'application/json' } });
    if (!res.ok && res.status !== 404) throw new Error(`Could not remove the attachment (HTTP ${res.status}).`);
  }

  window.StreamchatUploads = {
    ACCEPT, MAX_FILES, isImage, formatSize, facts, refusal, upload, imageSource, remove, UploadError,
  };
})();
