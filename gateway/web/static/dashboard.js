// The live dashboard: one card per watched task, a log of transitions.
//
// Page parameters: ?tasks=a:1,b:2 (watch these), ?token=… (subscriber token),
// ?transport=sse (one EventSource per task instead of one shared WebSocket),
// ?follow=1 / ?follow=0 (follow every task the gateway polls; on by default
// when no tasks are given).
import { PollcastSocket, isTerminal, parseTask, watchTask } from './pollcast.js';

const params = new URLSearchParams(location.search);
const token = params.get('token') || undefined;
const transport = params.get('transport') === 'sse' ? 'sse' : 'ws';
const BASE = ''; // same origin
const MAX_CARDS = 60;
const MAX_LOG = 300;
const LIST_EVERY_MS = 4000;
const IMAGE_RE = /\.(png|jpe?g|gif|webp|avif|svg)(\?.*)?$/i;
const STATE_ORDER = ['queued', 'running', 'succeeded', 'failed', 'cancelled', 'expired', 'rejected', 'unknown'];

const $ = (id) => document.getElementById(id);
const grid = $('grid');
const logList = $('log');
const cards = new Map(); // task key → card record

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

// -- following everything the gateway polls ------------------------------------

let listTimer = null;

async function listPolled() {
  try {
    const reply = await fetch(`${BASE}/v1/tasks?limit=100`, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
    });
    if (!reply.ok) {
      setHint(`cannot list the gateway's tasks (HTTP ${reply.status})`);
      return;
    }
    const body = await reply.json();
    for (const item of body.tasks ?? []) {
      if (!cards.has(item.task) && !isTerminal(item.snapshot)) watch(item.task);
    }
    setHint(`${body.total ?? 0} task(s) being polled`);
  } catch (error) {
    setHint(`cannot list the gateway's tasks: ${error.message}`);
  }
}

function setFollow(on) {
  clearInterval(listTimer);
  listTimer = null;
  if (on) {
    listPolled();
    listTimer = setInterval(listPolled, LIST_EVERY_MS);
  } else {
    setHint('');
  }
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
for (const key of preset) watch(key, { atEnd: true });
setFollow(follow.checked);
updateSummary();
