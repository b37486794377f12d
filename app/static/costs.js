// The admins' cost page: GET /api/admin/costs as a stacked bar chart per day and a table.
// No library and no build step: the chart is plain SVG. The admin token is typed once and kept
// in sessionStorage (this tab only, gone when it closes), and sent as a bearer token, as a
// script would; the CSV is fetched with it too and handed to the browser as a file.
(() => {
  'use strict';
  const TOKEN_KEY = 'streamchat.adminToken';
  const SVG = 'http://www.w3.org/2000/svg';
  const COLORS = ['#2557d6', '#d97706', '#059669', '#b3261e', '#7c3aed', '#0891b2', '#be185d', '#4d7c0f'];
  const W = 960, H = 320, LEFT = 64, BOTTOM = 28, TOP = 10;
  const $ = (id) => document.getElementById(id);
  const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);

  const token = $('costs-token');
  const from = $('costs-from');
  const to = $('costs-to');
  const by = $('costs-by');
  const errorBanner = byTestId('costs-error');

  const today = new Date();
  const iso = (d) => d.toISOString().slice(0, 10);
  const params = new URLSearchParams(location.search);
  to.value = params.get('to') || iso(today);
  from.value = params.get('from') || iso(new Date(today.getTime() - 29 * 86400000));
  by.value = params.get('by') === 'agent' ? 'agent' : 'model';
  token.value = sessionStorage.getItem(TOKEN_KEY) || '';

  function query(format) {
    return new URLSearchParams({ from: from.value, to: to.value, group_by: `day,${by.value}`, format });
  }

  async function call(format) {
    sessionStorage.setItem(TOKEN_KEY, token.value.trim());
    const response = await fetch(`/api/admin/costs?${query(format)}`, {
      headers: { Authorization: `Bearer ${token.value.trim()}` },
    });
    if (!response.ok) {
      let message = `${response.status}`;
      try { message = (await response.json()).error.message; } catch { /* not JSON */ }
      throw new Error(message);
    }
    return response;
  }

  function showError(error) {
    errorBanner.textContent = error ? `Could not load the costs: ${error.message}` : '';
    errorBanner.hidden = !error;
  }

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Every day of the range gets a slot, spent on or not: a gap is information too.
  function days() {
    const out = [];
    for (let d = new Date(`${from.value}T00:00:00Z`); iso(d) <= to.value; d = new Date(d.getTime() + 86400000)) {
      out.push(iso(d));
    }
    return out;
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const step = 10 ** Math.floor(Math.log10(value));
    return [1, 2, 2.5, 5, 10].map((m) => m * step).find((m) => m >= value);
  }

  function money(value) {
    return value >= 1 ? `$${value.toFixed(2)}` : `$${Number(value.toPrecision(3))}`;
  }

  function drawChart(rows) {
    const svg = byTestId('costs-chart');
    const title = svg.querySelector('title');
    svg.replaceChildren(title);
    const series = [...new Set(rows.map((r) => r[by.value]))].sort();
    const slots = days();
    const perDay = new Map(slots.map((d) => [d, new Map()]));
    for (const r of rows) perDay.get(r.day)?.set(r[by.value], Number(r.cost_usd));
    const max = niceMax(Math.max(0, ...[...perDay.values()].map((m) => [...m.values()].reduce((a, b) => a + b, 0))));
    const plotH = H - TOP - BOTTOM, plotW = W - LEFT - 8;
    const slot = plotW / slots.length, barW = Math.max(1, slot * 0.7);
    for (let i = 0; i <= 4; i++) {
      const y = TOP + plotH - (plotH * i) / 4;
      svg.append(el('line', { x1: LEFT, x2: W - 8, y1: y, y2: y, class: 'axis' }));
      svg.append(el('text', { x: LEFT - 6, y: y + 4, 'text-anchor': 'end' }, money((max * i) / 4)));
    }
    const labelEvery = Math.ceil(slots.length / 10);
    slots.forEach((day, i) => {
      const x = LEFT + i * slot + (slot - barW) / 2;
      let y = TOP + plotH;
      series.forEach((name, s) => {
        const value = perDay.get(day).get(name) || 0;
        if (!value) return;
        const h = (value / max) * plotH;
        y -= h;
        const bar = el('rect', {
          x, y, width: barW, height: Math.max(h, 0.5), fill: COLORS[s % COLORS.length],
          'data-testid': 'costs-bar', 'data-day': day, 'data-series': name,
        });
        bar.append(el('title', {}, `${day} ${name}: $${perDay.get(day).get(name)}`));
        svg.append(bar);
      });
      if (i % labelEvery === 0) {
        svg.append(el('text', { x: x + barW / 2, y: H - 8, 'text-anchor': 'middle' }, day.slice(5)));
      }
    });
    byTestId('costs-legend').replaceChildren(...series.map((name, s) => {
      const item = document.createElement('span');
      item.style.setProperty('--swatch', COLORS[s % COLORS.length]);
      item.textContent = name;
      return item;
    }));
  }

  function drawTable(rows) {
    byTestId('costs-by-header').textContent = by.value === 'model' ? 'Model' : 'Agent';
    const body = byTestId('costs-table').querySelector('tbody');
    body.replaceChildren(...rows.map((r) => {
      const tr = document.createElement('tr');
      tr.dataset.testid = 'costs-row';
      for (const value of [
        r.day, r[by.value], r.replies, r.generations, r.prompt_tokens, r.completion_tokens,
        `$${r.cost_usd}`, `$${r.cache_saved_usd}`, r.cost_per_complete_reply_usd === null ? '—' : `$${r.cost_per_complete_reply_usd}`,
        `${r.unknown_generations} / ${r.pending_generations}`,
      ]) {
        const td = document.createElement('td');
        td.textContent = value;
        tr.append(td);
      }
      return tr;
    }));
  }

  async function load() {
    try {
      const report = await (await call('json')).json();
      showError(null);
      drawChart(report.rows);
      drawTable(report.rows);
      const t = report.totals;
      byTestId('costs-total').textContent = `$${t.cost_usd}`;
      byTestId('costs-exactness').textContent =
        `(${t.exact_generations} exact, ${t.unknown_generations} unknown, ${t.pending_generations} pending)`;
      // What prompt caching saved over the range (docs/caching.md): said only where it saved.
      byTestId('costs-saved').textContent = Number(t.cache_saved_usd) > 0 ? `· saved $${t.cache_saved_usd} by caching` : '';
      history.replaceState(null, '', `?from=${from.value}&to=${to.value}&by=${by.value}`);
    } catch (error) {
      showError(error);
    }
  }

  async function downloadCsv() {
    try {
      const response = await call('csv');
      const name = /filename="([^"]+)"/.exec(response.headers.get('content-disposition') || '');
      const link = document.createElement('a');
      link.href = URL.createObjectURL(await response.blob());
      link.download = name ? name[1] : 'costs.csv';
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 0);
      showError(null);
    } catch (error) {
      showError(error);
    }
  }

  byTestId('costs-form').addEventListener('submit', (event) => { event.preventDefault(); load(); });
  byTestId('costs-csv').addEventListener('click', downloadCsv);
  if (token.value) load();
})();
