// The model picker: one panel, opened by the composer's model button (the conversation's model)
// and by a reply's "Regenerate with…" (a model for that one regenerate). It lists what
// GET /api/agents/{agent}/models answers, recommended first: each model's name, price per
// million tokens in and out, context, badges (reasoning, images, PDF, recommended, default), and the
// models that cannot be chosen (over the user's budget, not priced, gone from the catalog)
// shown disabled with the reason. Keyboard: the search box first, ↓/↑ between it and the
// models, Enter or Space picks, Escape closes and gives the focus back to what opened it.
(() => {
  'use strict';
  if (window.StreamchatPicker) return;

  const { h } = window.StreamchatDom;

  // $3, $0.15, $0.40, $0.065: a price per million tokens as people quote it.
  function price(v) {
    const n = Number(v);
    if (v == null || !Number.isFinite(n)) return '?';
    if (Number.isInteger(n)) return `$${n}`;
    return Number(n.toFixed(2)) === n ? `$${n.toFixed(2)}` : `$${Number(n.toPrecision(3))}`;
  }

  // 4k, 128k, 1M tokens.
  function tokens(n) {
    if (!Number.isFinite(n) || n <= 0) return null;
    if (n >= 1_000_000) return `${Number((n / 1_000_000).toFixed(1))}M`;
    return `${Math.round(n / 1000)}k`;
  }

  function usd(v) {
    const n = Number(v);
    if (!Number.isFinite(n)) return '?';
    return n >= 0.01 || n === 0 ? `$${n.toFixed(2)}` : `$${Number(n.toPrecision(2))}`;
  }

  const SCOPES = { daily: 'today', monthly: 'this month', global: "the service's budget today" };

  // Why a model cannot be chosen now, in words; null when it can.
  function reason(m) {
    if (m.available === false) return m.warning || 'No longer offered.';
    if (m.affordable !== false) return null;
    const over = m.over_budget;
    if (over?.reason === 'budget') {
      const when = SCOPES[over.scope] || over.scope;
      return `Over your budget: one reply could cost up to ${usd(m.worst_case_usd)}, ${usd(over.left_usd)} left ${when}.`;
    }
    if (over?.reason === 'price_unknown') return 'Its price is not known, and your spending has a limit.';
    return 'Not within your budget.';
  }

  function create() {
    const search = h('input', {
      type: 'search', id: 'model-search', class: 'picker-search', 'data-testid': 'model-search',
      autocomplete: 'off', placeholder: 'Search models…',
    });
    const list = h('ul', { class: 'picker-list', 'data-testid': 'model-options', 'aria-label': 'Models' });
    const title = h('h3', { id: 'model-picker-title', class: 'picker-title' });
    const panel = h('div', {
      class: 'picker', role: 'dialog', 'aria-labelledby': 'model-picker-title', 'data-testid': 'model-picker', hidden: true,
    },
    title,
    h('label', { for: 'model-search', class: 'sr-only' }, 'Search models'),
    search, list);
    let current = null; // {anchor, models, selected, onPick}

    function options() {
      return [...list.querySelectorAll('button:not([disabled])')];
    }

    function render() {
      const q = search.value.trim().toLowerCase();
      const shown = current.models.filter((m) => !q || `${m.name} ${m.id}`.toLowerCase().includes(q));
      const items = shown.map((m) => {
        const why = reason(m);
        const ctx = tokens(m.context_length);
        const badges = [
          m.default && ['default', 'Default'],
          m.recommended && ['recommended', 'Recommended'],
          m.capabilities?.reasoning && ['reasoning', 'Reasoning'],
          m.capabilities?.image_input && ['images', 'Images', 'Reads images'],
          m.capabilities?.file_input && ['pdf', 'PDF', 'Reads PDF files itself'],
        ].filter(Boolean).map(([kind, label, title]) => h('span', {
          class: `tag tag-${kind}`, 'data-testid': `model-badge-${kind}`, title,
        }, label));
        const known = m.pricing && m.pricing.known !== false;
        const cost = known
          ? `${price(m.pricing.input_per_million)} in · ${price(m.pricing.output_per_million)} out per 1M tokens`
          : 'Price not known';
        const chosen = m.id === current.selected;
        const button = h('button', {
          type: 'button', class: 'model-option', 'data-testid': 'model-option', 'data-model-id': m.id,
          'aria-pressed': String(chosen), disabled: Boolean(why),
          onclick: () => pick(m.id),
        },
        h('span', { class: 'model-name' }, m.name || m.id, ...badges),
        h('span', { class: 'model-id' }, m.id),
        h('span', { class: 'model-facts', 'data-testid': 'model-facts' }, cost, ctx ? ` · ${ctx} context` : ''),
        why ? h('span', { class: 'model-why', 'data-testid': 'model-unavailable' }, why) : null);
        return h('li', {}, button);
      });
      if (!items.length) items.push(h('li', { class: 'picker-empty', 'data-testid': 'model-none' }, 'No models match.'));
      list.replaceChildren(...items);
    }

    function pick(id) {
      const { onPick } = current;
      close();
      onPick(id);
    }

    // `placement`: 'up' (above the anchor), 'down', or 'auto': where there is more room.
    function open({ anchor, heading, models, selected, onPick, placement = 'up' }) {
      if (current?.anchor === anchor) { close(); return; }
      if (current) close({ refocus: false });
      current = { anchor, models, selected, onPick };
      title.textContent = heading;
      search.value = '';
      render();
      const { top, bottom } = anchor.getBoundingClientRect();
      const side = placement === 'auto' ? (top > window.innerHeight - bottom ? 'up' : 'down') : placement;
      panel.className = `picker picker-${side}`;
      anchor.after(panel);
      panel.hidden = false;
      anchor.setAttribute('aria-expanded', 'true');
      // Whole in view (a reply's panel may start out under the composer), the current model too.
      panel.scrollIntoView({ block: 'nearest' });
      list.querySelector('[aria-pressed="true"]')?.scrollIntoView({ block: 'nearest' });
      search.focus({ preventScroll: true });
    }

    function close({ refocus = true } = {}) {
      if (!current) return;
      const { anchor } = current;
      current = null;
      panel.hidden = true;
      anchor.setAttribute('aria-expanded', 'false');
      panel.remove();
      if (refocus) anchor.focus();
    }

    search.addEventListener('input', render);
    panel.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') {
        e.preventDefault();
        e.stopPropagation(); // not the page's "Esc stops the reply"
        close();
        return;
      }
      if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp') return;
      e.preventDefault();
      const stops = [search, ...options()];
      const at = stops.indexOf(document.activeElement);
      const step = e.key === 'ArrowDown' ? 1 : -1;
      stops[(at + step + stops.length) % stops.length].focus();
    });
    // Enter in the search box picks the first model that can be chosen.
    search.addEventListener('keydown', (e) => {
      if (e.key !== 'Enter') return;
      e.preventDefault();
      const first = options()[0];
      if (first) pick(first.dataset.modelId);
    });
    // A click or the focus elsewhere closes it, as a menu does.
    document.addEventListener('mousedown', (e) => {
      if (current && !panel.contains(e.target) && !current.anchor.contains(e.target)) close({ refocus: false });
    });
    panel.addEventListener('focusout', (e) => {
      if (current && e.relatedTarget && !panel.contains(e.relatedTarget) && e.relatedTarget !== current.anchor) {
        close({ refocus: false });
      }
    });

    return { open, close, isOpen: () => current != null };
  }

  window.StreamchatPicker = { create, reason };
})();
