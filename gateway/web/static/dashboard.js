// The live dashboard: one card per watched task, a log of transitions.
//
// Page parameters: ?tasks=a:1,b:2 (watch these), ?token=… (subscriber token),
// ?transport=sse (one EventSource per task instead of one shared WebSocket),
// ?follow=1 / ?follow=0 (follow every task the gateway follows; on by default
// when no tasks are given), ?page_size=20 (rows per page of the task list).
//
// The task list and the watcher counts come from GET /v1/tasks, one page per
// request (the listing is paged by an opaque cursor); a subscriber token may
// not list tasks, so with one the list is hidden.
import { PollcastSocket, parseTask, watchTask } from './pollcast.js';

const params = new URLSearchParams(location.search);
const token = params.get('token') || undefined;
const transport = params.get('transport') === 'sse' ? 'sse' : 'ws';
const BASE = ''; // same origin
const MAX_CARDS = 60;
const MAX_LOG = 300;
const LIST_EVERY_MS = 4000;
const INDEX_LIMIT = 1000; // one listing page: counts for the cards, tasks to follow
const FOLLOW_MAX = 100; // cards opened by following: one WebSocket takes 100 tasks
const PAGE_SIZE = Math.max(1, Math.min(1000, Number.parseInt(params.get('page_size') ?? '', 10) || 20));
const IMAGE_RE = /\.(png|jpe?g|gif|webp|avif|svg)(\?.*)?$/i;
const STATE_ORDER = ['queued', 'running', 'succeeded', 'failed', 'cancelled', 'expired', 'rejected', 'unknown'];

const $ = (id) => document.getElementById(id);
const grid = $('grid');
const logList = $('log');
const cards = new Map(); // task key → card record
const watcherCounts = new Map(); // task key → open subscriptions, from the listing

// -- connection ----------------------------------------------------------------

const STATUS_LABELS = {
  connecting: 'connecting…',
  open: 'live · WebSocket',
  reconnecting: 'reconnecting…',
  closed: 'disconnected',
  sse: 'live · Server-Sent Events',
};

function showStatus(status) {
  const box = $('connection');
  box.dataset.status = status;
  box.querySelector('.label').textContent = STATUS_LABELS[status] ?? status;
}

let socket = null;
if (transport === 'ws') {
  socket = new PollcastSocket(BASE, {
    token,
    onStatus: showStatus,
    onError: (error) => {
      if (!error.task) setHint(`${error.code}: ${error.message}`);
    },
  });
  showStatus(socket.status);
} else {
  showStatus('sse');
}

// -- cards ---------------------------------------------------------------------

function watch(text, { atEnd = false } = {}) {
  let key;
  try {
    key = parseTask(text.trim()).key;
  } catch (error) {
    setHint(error.message);
    return false;
  }
  if (cards.has(key)) {
    flash(key);
    return true;
  }
  const card = createCard(key, atEnd);
  const handlers = {
    onEvent: (event) => {
      card.event = event;
      render(card);
      if (event.event === 'progress') logProgress(event);
      if (event.event === 'notice') logNotice(event);
    },
    onState: (state, event, previous) => logTransition(event, previous),
    onDone: (event) => {
      card.done = true;
      if (event) {
        card.event = event;
        render(card);
      }
      evict();
    },
    onError: (error) => {
      if (!error.fatal) return;
      card.failure = `${error.code}: ${error.message}`;
      render(card);
      logLine(key, 'error', card.failure);
    },
  };
  card.handle =
    transport === 'ws' ? socket.watch(key, handlers) : watchTask(BASE, key, { token, ...handlers });
  evict();
  updateSummary();
  return true;
}

function unwatch(key) {
  const card = cards.get(key);
  if (!card) return;
  card.handle?.close();
  card.el.remove();
  cards.delete(key);
  updateSummary();
}

/** Keep the page light: past the limit, finished cards go first, oldest first. */
function evict() {
  for (const [key, card] of cards) {
    if (cards.size <= MAX_CARDS) break;
    if (card.done) unwatch(key);
  }
}

function createCard(key, atEnd) {
  const el = $('task-card').content.firstElementChild.cloneNode(true);
  const { provider, taskId } = parseTask(key);
  el.dataset.task = key;
  // Cards that start running together should not pulse in lockstep.
  el.style.setProperty('--phase', `${(-Math.random() * 1.3).toFixed(2)}s`);
  el.querySelector('.provider').textContent = provider;
  const id = el.querySelector('.task-id');
  id.textContent = taskId;
  id.title = key;
  el.querySelector('.remove').addEventListener('click', () => unwatch(key));
  // Pasted and discovered tasks go first; a ?tasks= list keeps its order.
  if (atEnd) grid.append(el);
  else grid.prepend(el);
  const card = { key, el, event: null, done: false, failure: null, handle: null, resultKey: '' };
  cards.set(key, card);
  render(card);
  return card;
}

function render(card) {
  const { el, event } = card;
  const state = event?.state ?? 'unknown';
  el.dataset.state = state;
  const badge = el.querySelector('.badge');
  badge.className = `badge state-${state}`;
  badge.textContent = event ? state : 'waiting';

  const bar = el.querySelector('.bar');
  const fill = el.querySelector('.fill');
  const progress = typeof event?.progress === 'number' ? event.progress : null;
  let width = progress ?? 0;
  if (state === 'succeeded') width = 100;
  const indeterminate = state === 'running' && progress === null;
  bar.classList.toggle('indeterminate', indeterminate);
  fill.style.width = indeterminate ? '' : `${Math.max(0, Math.min(100, width))}%`;
  if (indeterminate) bar.removeAttribute('aria-valuenow');
  else bar.setAttribute('aria-valuenow', String(width));

  el.querySelector('.pct').textContent =
    progress !== null ? `${progress}%` : state === 'succeeded' ? '100%' : '';
  const position = event?.position;
  el.querySelector('.queue').textContent =
    typeof position === 'number' && position > 0 ? `#${position} in queue` : '';
  el.querySelector('.seq').textContent = event ? `seq ${event.seq}` : '';
  el.querySelector('.eta').textContent = event && !event.terminal ? formatEta(event.eta_s) : '';
  renderWatchers(card);
  const updated = el.querySelector('.updated');
  updated.textContent = event ? clock(event.updated_at) : '';
  updated.dateTime = event?.updated_at ?? '';

  const message = el.querySelector('.message');
  message.textContent = event?.message ?? '';
  const error = el.querySelector('.error');
  const problem = event?.error ? `${event.error.code}: ${event.error.message}` : card.failure;
  error.textContent = problem ?? '';

  renderResult(card);
  updateSummary();
}

/** The gateway's estimate of the time left, when it gives one. */
function formatEta(seconds) {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds < 0) return '';
  if (seconds < 1) return '<1 s left';
  if (seconds < 90) return `~${Math.round(seconds)} s left`;
  if (seconds < 90 * 60) return `~${Math.round(seconds / 60)} min left`;
  return `~${(seconds / 3600).toFixed(1)} h left`;
}

function renderWatchers(card) {
  const count = watcherCounts.get(card.key);
  const el = card.el.querySelector('.watchers');
  el.textContent = typeof count === 'number' ? `${count} watching` : '';
  el.dataset.count = typeof count === 'number' ? String(count) : '';
}

function renderResult(card) {
  const result = card.event?.result;
  const urls = (result?.urls ?? []).filter(isWebUrl);
  const resultKey = urls.join('\n');
  if (resultKey === card.resultKey) return;
  card.resultKey = resultKey;
  const box = card.el.querySelector('.result');
  box.replaceChildren();
  const names = new Map(Object.entries(result?.files ?? {}).map(([name, url]) => [url, name]));
  for (const url of urls) {
    const label = names.get(url) ?? basename(url);
    box.append(IMAGE_RE.test(url) ? thumbnail(url, label) : fileChip(url, label));
  }
}

function thumbnail(url, label) {
  const link = anchor(url, 'thumb');
  const img = document.createElement('img');
  img.src = url;
  img.alt = label;
  img.loading = 'lazy';
  img.decoding = 'async';
  // An image that does not decode is still a result: show it as a file.
  img.addEventListener('error', () => link.replaceWith(fileChip(url, label)), { once: true });
  link.append(img);
  return link;
}

function fileChip(url, label) {
  const link = anchor(url, 'file');
  const kind = fileKind(url);
  link.dataset.kind = kind;
  const icon = document.createElement('span');
  icon.className = 'file-icon';
  icon.textContent = { image: '◧', model: '⬡', video: '▶', audio: '♪', file: '↓' }[kind];
  const name = document.createElement('span');
  name.className = 'file-name';
  name.textContent = label;
  link.append(icon, name);
  return link;
}

function anchor(url, className) {
  const link = document.createElement('a');
  link.className = className;
  link.href = url;
  link.target = '_blank';
  link.rel = 'noopener noreferrer';
  link.title = url;
  return link;
}

function fileKind(url) {
  const path = url.split('?')[0].toLowerCase();
  if (IMAGE_RE.test(path)) return 'image';
  if (/\.(ply|spz|sog|glb|gltf|obj|splat)$/.test(path)) return 'model';
  if (/\.(mp4|webm|mov|mkv)$/.test(path)) return 'video';
  if (/\.(mp3|wav|ogg|m4a|flac)$/.test(path)) return 'audio';
  return 'file';
}

// Result URLs come from upstream services: only http(s) becomes a link.
function isWebUrl(url) {
  try {
    return ['http:', 'https:'].includes(new URL(url).protocol);
  } catch {
    return false;
  }
}

function basename(url) {
  const path = url.split('?')[0];
  return decodeURIComponent(path.slice(path.lastIndexOf('/') + 1)) || url;
}

function flash(key) {
  const el = cards.get(key)?.el;
  if (!el) return;
  el.scrollIntoView({ behavior: 'smooth', block: 'nearest' });
  el.classList.remove('flash');
  void el.offsetWidth; // restart the animation
  el.classList.add('flash');
}

// -- summary -------------------------------------------------------------------

function updateSummary() {
  const counts = new Map();
  for (const card of cards.values()) {
    const state = card.event?.state ?? 'unknown';
    counts.set(state, (counts.get(state) ?? 0) + 1);
  }
  const items = [['watching', cards.size]];
  for (const state of STATE_ORDER) {
    const n = counts.get(state) ?? 0;
    if (n || ['queued', 'running', 'succeeded', 'failed'].includes(state)) items.push([state, n]);
  }
  const list = $('summary');
  list.replaceChildren(
    ...items.map(([name, n]) => {
      const li = document.createElement('li');
      li.className = `stat stat-${name}`;
      li.dataset.state = name;
      const count = document.createElement('strong');
      count.textContent = String(n);
      const label = document.createElement('span');
      label.textContent = name;
      li.append(count, label);
      return li;
    }),
  );
  $('empty').hidden = cards.size > 0;
}

// -- log -----------------------------------------------------------------------

function logTransition(event, previous) {
  // A task not polled yet is "unknown": not worth a line of its own.
  if (!previous && event.state === 'unknown') return;
  const what = document.createElement('span');
  what.className = 'what';
  if (previous && previous !== 'unknown') what.append(badge(previous), arrow());
  else what.append(note('first seen'));
  what.append(badge(event.state));
  if (event.terminal && event.error) what.append(note(event.error.message || event.error.code));
  addEntry(event.task, 'state', what, event.updated_at).dataset.state = event.state;
}

function logProgress(event) {
  const parts = [];
  if (typeof event.progress === 'number') parts.push(`${event.progress}%`);
  if (typeof event.position === 'number' && event.position > 0) parts.push(`#${event.position} in queue`);
  if (event.message) parts.push(event.message);
  const what = document.createElement('span');
  what.className = 'what';
  what.append(note(parts.join(' · ') || 'progress'));
  addEntry(event.task, 'progress', what, event.updated_at);
}

function logNotice(event) {
  logLine(event.task, 'notice', `${event.code ?? 'notice'}: ${event.message ?? ''}`, event.observed_at);
}

function logLine(task, kind, text, at) {
  const what = document.createElement('span');
  what.className = 'what';
  what.append(note(text));
  addEntry(task, kind, what, at);
}

function addEntry(task, kind, what, at) {
  const li = document.createElement('li');
  li.className = `entry kind-${kind}`;
  li.dataset.task = task;
  const time = document.createElement('time');
  time.textContent = clock(at);
  const who = document.createElement('button');
  who.type = 'button';
  who.className = 'who';
  const { provider, taskId } = parseTask(task);
  who.textContent = `${provider}:${shorten(taskId)}`;
  who.title = task;
  who.addEventListener('click', () => flash(task));
  li.append(time, who, what);
  logList.prepend(li);
  while (logList.children.length > MAX_LOG) logList.lastElementChild.remove();
  return li;
}

function badge(state) {
  const span = document.createElement('span');
  span.className = `badge sm state-${state}`;
  span.textContent = state;
  return span;
}

function arrow() {
  const span = document.createElement('span');
  span.className = 'arrow';
  span.textContent = '→';
  return span;
}

function note(text) {
  const span = document.createElement('span');
  span.className = 'note';
  span.textContent = text;
  return span;
}

function shorten(id) {
  return id.length > 14 ? `${id.slice(0, 8)}…${id.slice(-4)}` : id;
}

function clock(iso) {
  const date = iso ? new Date(iso) : new Date();
  if (Number.isNaN(date.getTime())) return '';
  return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
}

// -- the gateway's followed tasks: GET /v1/tasks ---------------------------------

const listing = { cursors: [null], page: 0, allowed: true };
let listTimer = null;

/** One page of the listing, or null (after saying why). */
async function listPage(limit, cursor, say) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (cursor) query.set('cursor', cursor);
  try {
    const reply = await fetch(`${BASE}/v1/tasks?${query}`, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
    });
    if (reply.status === 401 || reply.status === 403) {
      listing.allowed = false;
      $('followed').hidden = true;
      say('listing the gateway\'s tasks takes an API key');
      return null;
    }
    if (reply.status === 400 && cursor) {
      // A cursor from before a restart or an upgrade: start from the first page.
      listing.cursors = [null];
      listing.page = 0;
      return null;
    }
    if (!reply.ok) {
      say(`cannot list the gateway's tasks (HTTP ${reply.status})`);
      return null;
    }
    return await reply.json();
  } catch (error) {
    say(`cannot list the gateway's tasks: ${error.message}`);
    return null;
  }
}

function noteCounts(items) {
  for (const item of items) {
    watcherCounts.set(item.task, item.watchers);
    const card = cards.get(item.task);
    if (card) renderWatchers(card);
  }
}

/** The page of the table being shown, again (counts and states move). */
async function refreshTable() {
  const body = await listPage(PAGE_SIZE, listing.cursors[listing.page], (text) => {
    $('followed-hint').textContent = text;
  });
  if (!body) return;
  listing.cursors.length = listing.page + 1;
  if (body.next_cursor) listing.cursors.push(body.next_cursor);
  renderTable(body.tasks);
  noteCounts(body.tasks);
}

function renderTable(items) {
  const rows = items.map((item) => {
    const row = document.createElement('tr');
    row.dataset.task = item.task;
    row.dataset.state = item.state;
    const task = document.createElement('td');
    task.className = 'f-task';
    const open = document.createElement('button');
    open.type = 'button';
    open.textContent = item.task;
    open.title = `watch ${item.task} here`;
    open.addEventListener('click', () => watch(item.task));
    task.append(open);
    const state = document.createElement('td');
    state.append(badge(item.state));
    if (item.watched) {
      const mark = document.createElement('span');
      mark.className = 'f-watched';
      mark.textContent = 'watched';
      state.append(mark);
    }
    const progress = cell('f-progress num', progressText(item));
    const watchers = cell('f-watchers num', String(item.watchers));
    watchers.dataset.count = String(item.watchers);
    const seq = cell('f-seq num', String(item.seq));
    const updated = cell('f-updated', item.updated_at ? clock(item.updated_at) : '');
    row.append(task, state, progress, watchers, seq, updated);
    return row;
  });
  $('followed-rows').replaceChildren(...rows);
  $('followed-empty').hidden = rows.length > 0 || listing.page > 0;
  $('page-label').textContent = `page ${listing.page + 1}`;
  $('page-prev').disabled = listing.page === 0;
  $('page-next').disabled = listing.cursors.length <= listing.page + 1;
  $('followed-hint').textContent = rows.length ? `${rows.length} on this page` : '';
}

function progressText(item) {
  if (typeof item.progress === 'number') return `${item.progress}%`;
  if (typeof item.position === 'number' && item.position > 0) return `#${item.position}`;
  return '';
}

function cell(className, text) {
  const td = document.createElement('td');
  td.className = className;
  td.textContent = text;
  return td;
}

/** Counts for the cards, and (when following) cards for every unfinished task. */
async function refreshIndex() {
  const following = follow.checked;
  if (!following && cards.size === 0) return;
  const body = await listPage(INDEX_LIMIT, null, setHint);
  if (!body) return;
  noteCounts(body.tasks);
  if (!following) return;
  for (const item of body.tasks) {
    if (cards.size >= FOLLOW_MAX) break;
    if (!cards.has(item.task) && !item.terminal) watch(item.task);
  }
  const n = body.tasks.length;
  setHint(`${n}${body.next_cursor ? '+' : ''} task(s) followed by the gateway`);
}

async function refresh() {
  if (!listing.allowed) return;
  await refreshTable();
  if (listing.allowed) await refreshIndex();
}

function startListing() {
  clearInterval(listTimer);
  refresh();
  listTimer = setInterval(refresh, LIST_EVERY_MS);
}

function turnPage(delta) {
  const page = listing.page + delta;
  if (page < 0 || page >= listing.cursors.length) return;
  listing.page = page;
  refreshTable();
}

function setFollow(on) {
  if (on) refreshIndex();
  else setHint('');
}

function setHint(text) {
  $('hint').textContent = text;
}

// -- wiring --------------------------------------------------------------------

$('add-form').addEventListener('submit', (submit) => {
  submit.preventDefault();
  const input = $('task-input');
  const keys = input.value.split(/[\s,]+/).filter(Boolean);
  if (keys.every((key) => watch(key))) input.value = '';
});

$('clear-log').addEventListener('click', () => logList.replaceChildren());

const follow = $('follow-all');
const preset = (params.get('tasks') ?? '').split(',').map((t) => t.trim()).filter(Boolean);
follow.checked = params.has('follow') ? params.get('follow') === '1' : preset.length === 0;
follow.addEventListener('change', () => setFollow(follow.checked));
$('page-prev').addEventListener('click', () => turnPage(-1));
$('page-next').addEventListener('click', () => turnPage(1));
for (const key of preset) watch(key, { atEnd: true });
startListing();
updateSummary();
