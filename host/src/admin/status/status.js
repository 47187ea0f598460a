// The status page: reads /api/status every 2 s and draws it. Every name
// and reason is set as text (never as HTML), and the page's CSP runs no
// other script. With [admin] token_file the API answers 401 until the
// page sends the token, which it asks for once per tab.
'use strict';

const REFRESH_MS = 2000;
const TOKEN_KEY = 'switchyard-admin-token';
let token = sessionStorage.getItem(TOKEN_KEY);
let timer = null;

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function cell(row, text, key, cls) {
  const td = el('td', text, cls);
  if (key) td.dataset.k = key;
  row.append(td);
  return td;
}

function headers(extra) {
  const h = Object.assign({}, extra);
  if (token) h.Authorization = 'Bearer ' + token;
  return h;
}

function count(n) {
  return Math.round(n).toString();
}

function rate(n) {
  return n >= 100 ? Math.round(n).toString() : n.toFixed(1);
}

function percent(n) {
  return (n * 100).toFixed(n > 0 && n < 0.01 ? 2 : 1) + '%';
}

function ms(v) {
  if (v === null || v === undefined) return '–';
  if (v === '+Inf') return '> 6.5 s';
  return v < 1 ? v.toFixed(2) : v.toFixed(v < 10 ? 1 : 0);
}

function time(unixMs) {
  return new Date(unixMs).toLocaleTimeString([], { hour12: false });
}

// Sparklines of [values (oldest first), class, fixed top or 0] each,
// stretched over the width: the history is at most 5 minutes long.
function spark(series) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('viewBox', '0 0 150 22');
  svg.setAttribute('preserveAspectRatio', 'none');
  for (const [values, cls, ceiling] of series) {
    if (!values || values.length < 2) continue;
    const top = ceiling || Math.max(...values) || 1;
    const step = 150 / (values.length - 1);
    const points = values.map((v, i) => `${(i * step).toFixed(1)},${(21 - (v / top) * 20).toFixed(1)}`);
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('class', cls);
    line.setAttribute('points', points.join(' '));
    svg.append(line);
  }
  return svg;
}

function setState(text, cls) {
  const s = $('state');
  s.textContent = text;
  s.className = 'pill ' + cls;
}

function drawListeners(listeners) {
  const body = $('listeners').tBodies[0];
  body.replaceChildren(...listeners.map((l) => {
    const tr = el('tr');
    tr.dataset.listener = l.name;
    cell(tr, l.name);
    cell(tr, l.protocol);
    cell(tr, l.address || '–');
    cell(tr, count(l.connections), 'connections', 'n');
    cell(tr, count(l.requests), 'requests', 'n');
    cell(tr, rate(l.rate), 'rate', 'n');
    cell(tr).append(spark([[l.history, 'rate']]));
    return tr;
  }));
}

function health(b) {
  if (b.drained) return ['drained', 'warn'];
  if (b.ejected) return ['ejected', 'bad'];
  if (!b.checks_pass) return ['down', 'bad'];
  return ['up', 'ok'];
}

function drainButton(pool, b) {
  const action = b.drained ? 'undrain' : 'drain';
  const button = el('button', action);
  button.type = 'button';
  button.dataset.action = action;
  button.addEventListener('click', () => setDrained(pool, b.name, action, button));
  return button;
}

function drawPool(p) {
  const box = el('div');
  box.dataset.pool = p.name;
  const title = el('h3', p.name + ' ');
  title.append(el('span', `${p.algorithm} · p50 ≤ ${ms(p.p50_ms)} ms · p99 ≤ ${ms(p.p99_ms)} ms`, 'muted'));
  box.append(title);
  const table = el('table');
  const head = table.createTHead().insertRow();
  const names = ['backend', 'address', 'health', 'ejections', 'in flight', 'requests', 'per s', '5xx', '5xx rate', 'connect errors', 'last 5 min', ''];
  for (const name of names) {
    head.append(el('th', name, ['ejections', 'in flight', 'requests', 'per s', '5xx', '5xx rate', 'connect errors'].includes(name) ? 'n' : ''));
  }
  const body = table.createTBody();
  for (const b of p.backends) {
    const tr = body.insertRow();
    tr.dataset.pool = p.name;
    tr.dataset.backend = b.name;
    cell(tr, b.name);
    cell(tr, b.address);
    const [word, cls] = health(b);
    cell(tr, word, 'health', cls);
    cell(tr, b.ejections, 'ejections', 'n');
    cell(tr, b.in_flight, 'in_flight', 'n');
    cell(tr, count(b.requests), 'requests', 'n');
    cell(tr, rate(b.rate), 'rate', 'n');
    cell(tr, count(b.server_errors), 'server_errors', 'n');
    cell(tr, percent(b.error_ratio), 'error_ratio', 'n');
    cell(tr, count(b.connect_errors), 'connect_errors', 'n');
    cell(tr).append(spark([[b.history, 'rate'], [b.error_history, 'err', 1]]));
    cell(tr).append(drainButton(p.name, b));
  }
  const scroll = el('div', null, 'scroll');
  scroll.append(table);
  box.append(scroll);
  return box;
}

// A canary's progress: its share, its requests against min_requests, and
// both sides' error counts.
function canary(c) {
  if (!c) return 'none';
  if (c.shadow) {
    const kinds = Object.entries(c.shadow.by_kind).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`);
    return `shadow ${c.version.slice(0, 12)}: ${c.shadow.same} same, ${c.shadow.differ} differ` +
      (kinds.length ? ` (${kinds.join(', ')})` : '') + `; ${c.shadow.skipped} not shadowed (busy)`;
  }
  const side = (s) => `${s.policy_errors} policy errors, ${s.server_errors} 5xx in ${s.requests}`;
  return `canary ${c.version.slice(0, 12)} on ${c.percent}% of clients: ` +
    `${c.canary.requests} of ${c.min_requests} requests; ${side(c.canary)} ` +
    `(current: ${side(c.live)}); ${c.remaining_s} s left`;
}

function drawPolicies(policies, refused) {
  const body = $('policies').tBodies[0];
  body.replaceChildren(...policies.map((p) => {
    const tr = el('tr');
    tr.dataset.policy = p.name;
    cell(tr, p.name);
    cell(tr, p.version.slice(0, 12), 'version').title = p.version;
    cell(tr, time(p.loaded_at_unix * 1000), 'loaded');
    cell(tr, count(p.calls), 'calls', 'n');
    const errors = Object.entries(p.errors).map(([k, v]) => `${k} ${count(v)}`).join(', ');
    cell(tr, errors || 'none', 'errors', errors ? 'bad' : 'muted');
    cell(tr, p.p99_us_at_most === null ? '–' : count(p.p99_us_at_most), 'p99', 'n');
    cell(tr, p.last_refused || (p.file_missing ? 'file is gone; this version serves' : '–'), 'refused', 'wrap' + (p.last_refused ? ' bad' : ''));
    cell(tr, canary(p.canary), 'canary', 'wrap' + (p.canary ? ' warn' : ' muted'));
    return tr;
  }));
  const live = new Set(policies.map((p) => p.name));
  const orphans = Object.entries(refused).filter(([name]) => !live.has(name));
  $('refused').replaceChildren(...orphans.map(([name, why]) => el('p', `${name}: refused: ${why}`, 'bad')));
}

function drawReloads(reloads) {
  const body = $('reloads').tBodies[0];
  body.replaceChildren(...reloads.map((r) => {
    const tr = el('tr');
    cell(tr, time(r.at_unix_ms));
    cell(tr, r.what);
    cell(tr, r.name, null, 'wrap');
    cell(tr, r.ok ? 'ok' : 'refused', 'outcome', r.ok ? 'ok' : 'bad');
    cell(tr, r.detail, 'detail', 'wrap');
    return tr;
  }));
}

function draw(s) {
  drawListeners(s.listeners);
  $('pools').replaceChildren(...s.pools.map(drawPool));
  drawPolicies(s.policies, s.refused);
  drawReloads(s.reloads);
  setState(s.ready ? 'ready' : 'starting', s.ready ? 'ok' : 'warn');
  $('updated').textContent = 'updated ' + new Date().toLocaleTimeString([], { hour12: false });
  $('main').hidden = false;
  document.body.dataset.loaded = String(Date.now());
}

function askToken(why) {
  clearTimeout(timer);
  $('main').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = why;
  setState('token needed', 'warn');
  $('token').focus();
}

async function refresh() {
  clearTimeout(timer);
  try {
    const r = await fetch('/api/status', { headers: headers(), cache: 'no-store' });
    if (r.status === 401) {
      askToken(token ? 'That token was refused.' : '');
      return;
    }
    if (!r.ok) {
      setState('HTTP ' + r.status, 'bad');
    } else {
      draw(await r.json());
    }
  } catch (e) {
    setState('unreachable', 'bad');
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

async function setDrained(pool, backend, action, button) {
  button.disabled = true;
  const path = ['api', 'pools', pool, 'backends', backend, action].map(encodeURIComponent).join('/');
  try {
    const r = await fetch('/' + path, {
      method: 'POST',
      headers: headers({ 'Content-Type': 'application/json' }),
      body: '{}',
    });
    if (!r.ok) setState(`${action} failed: HTTP ${r.status}`, 'bad');
  } catch (e) {
    setState(`${action} failed`, 'bad');
  }
  refresh();
}

$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  token = $('token').value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  $('login').hidden = true;
  refresh();
});

refresh();
