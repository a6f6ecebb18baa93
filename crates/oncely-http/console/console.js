// The oncely console: one page over the service's JSON API. Every value from the server
// is written with textContent (never as HTML); state-changing requests carry the
// session's CSRF token.
'use strict';

const STATES = ['ACCEPTED', 'PROCESSING', 'COMPLETED', 'FAILED', 'TIMEOUT', 'CANCELLED'];
const TERMINAL = ['COMPLETED', 'FAILED', 'TIMEOUT', 'CANCELLED'];
const REFRESH_MS = 2000;
const BULK_PAGE = 100;

const app = {
  session: null,
  resources: [],
  refresh: null,
  timer: null,
  bulk: null,
};

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

function $(id) {
  return document.getElementById(id);
}

// An element with attributes and children; strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && app.session && app.session.csrfToken) {
    headers['X-CSRF-Token'] = app.session.csrfToken;
  }
  const response = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = { detail: text };
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401 && path !== '/console/session') showLogin(error.message);
    throw error;
  }
  return data;
}

function can(role) {
  return Boolean(app.session && app.session.roles.includes(role));
}

function message(text, kind) {
  const node = $('message');
  node.textContent = text || '';
  node.className = `message ${kind || ''}`;
  node.hidden = !text;
}

function when(iso) {
  if (!iso) return '—';
  const at = new Date(iso);
  const seconds = Math.round((Date.now() - at.getTime()) / 1000);
  const ago = Math.abs(seconds);
  const span = ago < 60 ? `${ago}s` : ago < 3600 ? `${Math.floor(ago / 60)}m`
    : ago < 86400 ? `${Math.floor(ago / 3600)}h` : `${Math.floor(ago / 86400)}d`;
  return seconds >= 0 ? `${span} ago` : `in ${span}`;
}

function time(iso) {
  return el('time', { datetime: iso || '', title: iso || '' }, when(iso));
}

function badge(state) {
  return el('span', { class: `badge ${String(state).toLowerCase()}`, 'data-test': 'state' }, state);
}

function keyPath(resource, key) {
  return `/v1/${encodeURIComponent(resource)}/${encodeURIComponent(key)}`;
}

function opLink(resource, key) {
  return el('a', { href: `#/operation/${encodeURIComponent(resource)}/${encodeURIComponent(key)}` }, key);
}

// ---- session ----------------------------------------------------------------------------

function showLogin(why) {
  app.session = null;
  stopRefresh();
  $('login').hidden = false;
  $('nav').hidden = true;
  $('search').hidden = true;
  $('logout').hidden = true;
  $('who').textContent = '';
  $('view').replaceChildren();
  message('');
  $('login-error').textContent = why || '';
  $('api-key').focus();
}

async function startSession(session) {
  app.session = session;
  $('login').hidden = true;
  $('nav').hidden = false;
  $('search').hidden = false;
  $('logout').hidden = !session.keyId;
  $('who').textContent = session.keyId
    ? `${session.tenant} · key ${session.keyId}`
    : `${session.tenant} · local, no key`;
  $('who').title = `tenant ${session.tenant}; roles: ${session.roles.join(', ')}`;
  const overview = await api('GET', '/v1/overview');
  app.resources = overview.domains.map((domain) => domain.resource);
  $('search-resource').replaceChildren(...app.resources.map((r) => el('option', { value: r }, r)));
  route();
}

async function login(event) {
  event.preventDefault();
  $('login-error').textContent = '';
  try {
    const session = await api('POST', '/console/session', { apiKey: $('api-key').value });
    $('api-key').value = '';
    await startSession(session);
  } catch (error) {
    $('login-error').textContent = error.message;
  }
}

async function logout() {
  try {
    await api('DELETE', '/console/session');
  } finally {
    showLogin('Logged out.');
  }
}

// ---- refresh ----------------------------------------------------------------------------

function stopRefresh() {
  app.refresh = null;
  if (app.timer) clearTimeout(app.timer);
  app.timer = null;
}

// Runs `refresh` now and every REFRESH_MS while the view stays and the tab is visible.
function live(refresh) {
  stopRefresh();
  app.refresh = refresh;
  const tick = async () => {
    if (app.refresh !== refresh) return;
    if (!document.hidden) {
      try {
        await refresh();
        $('live').textContent = `live · ${new Date().toLocaleTimeString()}`;
        $('live').classList.remove('stale');
      } catch (error) {
        $('live').textContent = `not refreshed: ${error.message}`;
        $('live').classList.add('stale');
      }
    }
    if (app.refresh === refresh) app.timer = setTimeout(tick, REFRESH_MS);
  };
  return tick();
}

// ---- routing ----------------------------------------------------------------------------

function route() {
  if (!app.session) return;
  const hash = location.hash.replace(/^#/, '') || '/overview';
  const [path, query] = hash.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || '');
  message('');
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('current', link.dataset.view === parts[0]);
  }
  if (parts[0] === 'operations') return operations(params);
  if (parts[0] === 'operation' && parts.length === 3) return operation(parts[1], parts[2]);
  return overview();
}

// ---- overview ---------------------------------------------------------------------------

function overview() {
  const body = el('tbody');
  const since = el('p', { class: 'note' });
  $('view').replaceChildren(
    el('h1', {}, 'Overview'),
    since,
    el('table', { class: 'overview', 'data-test': 'overview' },
      el('thead', {}, el('tr', {},
        el('th', {}, 'domain'),
        STATES.map((state) => el('th', TERMINAL.includes(state)
          ? { class: 'num', title: 'Ended in the window' }
          : { class: 'num', title: 'Now' }, state.toLowerCase())),
        el('th', { class: 'num', title: 'ACCEPTED after a failed attempt, waiting for the next' }, 'retrying'),
        el('th', { class: 'num', title: 'PROCESSING past its lease; the Reaper takes it back' }, 'stuck'),
        el('th', { class: 'num', title: 'How long the oldest due operation has waited' }, 'oldest due'),
        el('th', { class: 'num', title: 'Operations that ended in the window, per minute' }, 'ended / min'),
        el('th', { class: 'num', title: 'Leases the Reaper took back in the window' }, 'rescued'))),
      body));
  return live(async () => {
    const data = await api('GET', '/v1/overview?windowMinutes=15');
    since.textContent = `Tenant ${data.tenant}. Accepted and processing: now. Completed, failed, timeout, cancelled, throughput and rescues: the last 15 minutes.`;
    body.replaceChildren(...data.domains.map((domain) => {
      const r = domain.resource;
      const filtered = (query) => `#/operations?resource=${encodeURIComponent(r)}&${query}`;
      return el('tr', { 'data-resource': r },
        el('th', {}, el('a', { href: filtered('') }, r), el('small', {}, ` ${domain.domain}`)),
        STATES.map((state) => el('td', { class: 'num' },
          el('a', { href: filtered(`state=${state}`), 'data-test': `count-${r}-${state}` },
            String(domain.states[state] || 0)))),
        el('td', { class: 'num', 'data-test': `retrying-${r}` },
          el('a', { href: filtered('state=ACCEPTED&attemptsMin=1') }, String(domain.retrying))),
        el('td', { class: `num ${domain.stuck ? 'warn' : ''}`, 'data-test': `stuck-${r}` }, String(domain.stuck)),
        el('td', { class: 'num' }, domain.oldestDue ? when(domain.oldestDue).replace(' ago', '') : '—'),
        el('td', { class: 'num' }, (domain.ended / 15).toFixed(1)),
        el('td', { class: 'num', 'data-test': `rescued-${r}` }, String(domain.rescued)));
    }));
  });
}

// ---- operations -------------------------------------------------------------------------

const FILTERS = ['state', 'attemptsMin', 'errorCode', 'createdFrom', 'createdUntil'];

function filterQuery(params) {
  const query = new URLSearchParams();
  for (const name of FILTERS) {
    const value = params.get(name);
    if (value) query.set(name, value);
  }
  return query;
}

function localInput(iso) {
  if (!iso) return '';
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return '';
  return new Date(at.getTime() - at.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function operations(params) {
  const resource = params.get('resource') || app.resources[0];
  const form = el('form', { class: 'filters', 'data-test': 'filters' },
    el('label', {}, 'domain ', el('select', { name: 'resource' },
      app.resources.map((r) => el('option', { value: r, selected: r === resource }, r)))),
    el('label', {}, 'state ', el('select', { name: 'state' },
      el('option', { value: '' }, 'any'),
      STATES.map((s) => el('option', { value: s, selected: s === params.get('state') }, s)))),
    el('label', {}, 'attempts ≥ ', el('input', { name: 'attemptsMin', type: 'number', min: 0, value: params.get('attemptsMin') || '' })),
    el('label', {}, 'error code ', el('input', { name: 'errorCode', value: params.get('errorCode') || '' })),
    el('label', {}, 'accepted from ', el('input', { name: 'createdFrom', type: 'datetime-local', value: localInput(params.get('createdFrom')) })),
    el('label', {}, 'until ', el('input', { name: 'createdUntil', type: 'datetime-local', value: localInput(params.get('createdUntil')) })),
    el('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const query = new URLSearchParams({ resource: data.get('resource') });
    for (const name of FILTERS) {
      let value = String(data.get(name) || '').trim();
      if (value && name.startsWith('created')) value = new Date(value).toISOString();
      if (value) query.set(name, value);
    }
    location.hash = `#/operations?${query}`;
  });

  const filter = filterQuery(params);
  const rows = el('tbody');
  const pager = el('p', { class: 'pager' });
  const bulk = el('div', { class: 'bulk', 'data-test': 'bulk' });
  let cursor = params.get('cursor');

  const actions = can('operate') ? [
    el('button', { type: 'button', 'data-test': 'bulk-retry', onclick: () => confirmBulk(resource, filter, 'retry', bulk) }, 'Retry all matching…'),
    el('button', { type: 'button', 'data-test': 'bulk-cancel', onclick: () => confirmBulk(resource, filter, 'cancel', bulk) }, 'Cancel all matching…'),
  ] : [];

  $('view').replaceChildren(
    el('h1', {}, 'Operations'),
    form,
    el('div', { class: 'actions' }, actions),
    bulk,
    el('table', { 'data-test': 'operations' },
      el('thead', {}, el('tr', {},
        el('th', {}, 'key'), el('th', {}, 'state'), el('th', { class: 'num' }, 'attempts'),
        el('th', {}, 'error'), el('th', {}, 'accepted'), el('th', {}, 'updated'))),
      rows),
    pager);

  return live(async () => {
    const query = new URLSearchParams(filter);
    if (cursor) query.set('cursor', cursor);
    const page = await api('GET', `/v1/${encodeURIComponent(resource)}?${query}`);
    rows.replaceChildren(...page.items.map((op) => el('tr', { 'data-key': op.key },
      el('td', {}, opLink(resource, op.key)),
      el('td', {}, badge(op.state), op.cancelRequestedAt ? el('small', {}, ' cancel requested') : null),
      el('td', { class: 'num' }, String(op.attempts)),
      el('td', {}, op.error ? (op.error.code || op.error.message) : ''),
      el('td', {}, time(op.createdAt)),
      el('td', {}, time(op.updatedAt)))));
    if (!page.items.length) rows.append(el('tr', {}, el('td', { colspan: 6, class: 'note' }, 'Nothing matches.')));
    pager.replaceChildren();
    if (cursor) {
      pager.append(el('a', { href: `#/operations?${new URLSearchParams({ resource, ...Object.fromEntries(filter) })}` }, '« newest'), ' ');
    }
    if (page.nextCursor) {
      const next = new URLSearchParams({ resource, ...Object.fromEntries(filter), cursor: page.nextCursor });
      pager.append(el('a', { href: `#/operations?${next}`, 'data-test': 'next-page' }, 'older »'));
    }
  });
}

function describe(filter) {
  const parts = [...filter].map(([name, value]) => `${name} = ${value}`);
  return parts.length ? parts.join(', ') : 'no filter: every operation';
}

function confirmBulk(resource, filter, action, box) {
  if (app.bulk && app.bulk.running) return;
  const verb = action === 'retry' ? 'Retry' : 'Cancel';
  const what = action === 'retry'
    ? 'FAILED and TIMEOUT operations go back to ACCEPTED under the same key; others are listed as not retried.'
    : 'Operations not yet running end CANCELLED; running ones end CANCELLED unless their attempt succeeds; ended ones are listed as not cancelled.';
  box.replaceChildren(
    el('p', {}, `${verb} every ${resource} operation matching ${describe(filter)}? ${what}`),
    el('button', { type: 'button', class: 'danger', 'data-test': 'bulk-confirm', onclick: () => runBulk(resource, filter, action, box) }, `${verb} them`),
    ' ',
    el('button', { type: 'button', onclick: () => box.replaceChildren() }, 'Back'));
}

// One page per request, following nextCursor, until the end or Stop.
async function runBulk(resource, filter, action, box) {
  const run = { running: true, stopped: false, pages: 0, matched: 0, done: 0, failed: [] };
  app.bulk = run;
  const progress = el('p', { 'data-test': 'bulk-progress' });
  const failures = el('ul', { class: 'failures', 'data-test': 'bulk-failures' });
  const stop = el('button', { type: 'button', onclick: () => { run.stopped = true; } }, 'Stop');
  box.replaceChildren(progress, stop, failures);
  const show = (suffix) => {
    progress.textContent = `${action}: ${run.pages} page(s), ${run.matched} matched, ${run.done} done, ${run.failed.length} not done${suffix}`;
  };
  let cursor = null;
  try {
    do {
      const query = new URLSearchParams(filter);
      query.set('limit', String(BULK_PAGE));
      if (cursor) query.set('cursor', cursor);
      const page = await api('POST', `/v1/bulk/${encodeURIComponent(resource)}/${action}?${query}`);
      run.pages += 1;
      run.matched += page.matched;
      run.done += page.done;
      for (const failure of page.failed) {
        run.failed.push(failure);
        failures.append(el('li', {}, opLink(resource, failure.key), ` ${failure.type}: ${failure.detail}`));
      }
      cursor = page.nextCursor;
      show(cursor && !run.stopped ? ' …' : '');
    } while (cursor && !run.stopped);
    show(run.stopped ? ' (stopped)' : ' — finished');
  } catch (error) {
    show(` — stopped by an error: ${error.message}`);
  } finally {
    run.running = false;
    stop.remove();
  }
}

// ---- one operation ----------------------------------------------------------------------

function field(name, value) {
  return [el('dt', {}, name), el('dd', {}, value === null || value === undefined || value === '' ? '—' : value)];
}

function json(value) {
  return el('pre', { class: 'json' }, JSON.stringify(value, null, 2));
}

function entrySummary(entry) {
  const detail = entry.detail || {};
  const parts = [];
  if (detail.by) parts.push(`by ${detail.by}`);
  if (detail.previousState) parts.push(`was ${detail.previousState}`);
  if (detail.outcome && detail.outcome.type) {
    const outcome = detail.outcome;
    parts.push(outcome.type + (outcome.unknown ? ' (outcome unknown)' : ''));
    if (outcome.code) parts.push(outcome.code);
    if (outcome.reason) parts.push(outcome.reason);
  }
  if (detail.decision && detail.decision.decision) {
    const decision = detail.decision;
    parts.push(`→ ${decision.decision}${decision.nextRetryAt ? ` at ${new Date(decision.nextRetryAt).toLocaleTimeString()}` : ''}`);
  }
  if (detail.reconciled) parts.push('reconciled');
  if (detail.leaseUntil) parts.push(`lease until ${new Date(detail.leaseUntil).toLocaleTimeString()}`);
  return parts.join(' · ');
}

function timeline(entries) {
  const attempts = new Map();
  for (const entry of entries) {
    if (!attempts.has(entry.attempt)) attempts.set(entry.attempt, []);
    attempts.get(entry.attempt).push(entry);
  }
  return el('ol', { class: 'timeline', 'data-test': 'timeline' }, [...attempts].map(([attempt, list]) =>
    el('li', {},
      el('h3', {}, attempt === 0 ? 'before the first attempt' : `attempt ${attempt}`),
      el('ul', {}, list.map((entry) => el('li', { 'data-kind': entry.kind },
        el('span', { class: 'kind' }, entry.kind),
        ' ', badge(entry.stateAfter), ' ',
        time(entry.recordedAt),
        entry.owner ? el('small', {}, ` on ${entry.owner}`) : null,
        el('div', { class: 'detail' }, entrySummary(entry)),
        el('details', {}, el('summary', {}, 'detail'), json(entry.detail))))))));
}

function operation(resource, key) {
  const head = el('div', { class: 'op-head' });
  const fields = el('dl', { class: 'fields' });
  const bodies = el('div', { class: 'bodies' });
  const log = el('div');
  $('view').replaceChildren(
    el('p', {}, el('a', { href: `#/operations?resource=${encodeURIComponent(resource)}` }, `« ${resource}`)),
    head, fields, bodies, el('h2', {}, 'Write-ahead log'), log);
  const act = async (action) => {
    try {
      const op = await api('POST', `${keyPath(resource, key)}/${action}`);
      message(action === 'retry' ? `Retried: ${op.state}.`
        : op.state === 'CANCELLED' ? 'Cancelled.' : 'Cancel requested: it ends CANCELLED unless the running attempt succeeds.', 'ok');
      await app.refresh();
    } catch (error) {
      message(`${action} refused: ${error.message}`, 'error');
    }
  };
  return live(async () => {
    let op;
    try {
      op = await api('GET', keyPath(resource, key));
    } catch (error) {
      if (error.status === 404) {
        stopRefresh();
        head.replaceChildren(el('h1', {}, key));
        message(`No ${resource} operation under the key ${key} for this tenant.`, 'error');
        return;
      }
      throw error;
    }
    const history = await api('GET', `${keyPath(resource, key)}/history`);
    const buttons = [];
    if (can('operate') && (op.state === 'FAILED' || op.state === 'TIMEOUT')) {
      buttons.push(el('button', { type: 'button', 'data-test': 'retry', onclick: () => act('retry') }, 'Retry'));
    }
    if (can('operate') && (op.state === 'ACCEPTED' || op.state === 'PROCESSING')) {
      buttons.push(el('button', { type: 'button', class: 'danger', 'data-test': 'cancel', onclick: () => act('cancel') }, 'Cancel'));
    }
    head.replaceChildren(el('h1', {}, el('span', { 'data-test': 'op-key' }, op.key), ' ', badge(op.state)), el('div', { class: 'actions' }, buttons));
    fields.replaceChildren(
      ...field('tenant', op.tenant),
      ...field('domain', `${op.domain} (${resource})`),
      ...field('event', op.eventType),
      ...field('attempts', String(op.attempts)),
      ...field('error', op.error ? `${op.error.code ? `${op.error.code}: ` : ''}${op.error.message}` : null),
      ...field('accepted', time(op.createdAt)),
      ...field('updated', time(op.updatedAt)),
      ...field('ended', op.completedAt ? time(op.completedAt) : null),
      ...field('next due', op.nextRetryAt && !TERMINAL.includes(op.state) ? time(op.nextRetryAt) : null),
      ...field('cancel requested', op.cancelRequestedAt ? time(op.cancelRequestedAt) : null),
      ...field('trace id', op.traceId || null));
    bodies.replaceChildren(
      el('div', {}, el('h2', {}, 'Request'), json(op.request)),
      el('div', {}, el('h2', {}, 'Outcome'), op.outcome ? json(op.outcome) : el('p', { class: 'note' }, 'none yet')));
    log.replaceChildren(timeline(history.entries));
  });
}

// ---- start ------------------------------------------------------------------------------

function search(event) {
  event.preventDefault();
  const key = $('search-key').value.trim();
  if (!key) return;
  location.hash = `#/operation/${encodeURIComponent($('search-resource').value)}/${encodeURIComponent(key)}`;
}

document.addEventListener('DOMContentLoaded', async () => {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('search').addEventListener('submit', search);
  window.addEventListener('hashchange', route);
  try {
    await startSession(await api('GET', '/console/session'));
  } catch (error) {
    showLogin(error.status === 401 ? '' : error.message);
  }
});
