/**
 * pollcast client — follow task status pushed by a pollcast gateway.
 *
 * One ES module, no dependencies; runs in browsers and in Node ≥ 20.
 *
 * - {@link watchTask}: one task over Server-Sent Events (`EventSource`).
 * - {@link PollcastSocket}: many tasks over one WebSocket, reconnecting by
 *   itself and resuming every task where it left off.
 *
 * Both deliver each event of a task once and in order: every `state` and
 * `progress` event carries a per-task `seq`, and whatever a reconnect
 * replays at or below the last seq already delivered is dropped here.
 * The wire contract is docs/protocol.md in the repository.
 */

/** The SSE event names the gateway sends (`event: …`). */
export const EVENT_KINDS = Object.freeze(['snapshot', 'state', 'progress', 'notice']);

/** States after which a task never changes again. */
export const TERMINAL_STATES = Object.freeze([
  'succeeded',
  'failed',
  'cancelled',
  'expired',
  'rejected',
]);

// EventSource.readyState (WHATWG HTML, "Server-sent events"): CLOSED means the
// browser gave up for good (an HTTP error status, a 204, a wrong content type).
const ES_CLOSED = 2;
// WebSocket.readyState OPEN.
const WS_OPEN = 1;
// Close codes a client may send (RFC 6455 §7.4.2: 1000 or 3000–4999).
const CLOSE_NORMAL = 1000;
const CLOSE_NO_HEARTBEAT = 4000;
// 1008 policy violation and 4400–4499 (the gateway's 4000 + HTTP status: 4401, 4403):
// the server refuses these credentials; retrying with the same ones will not help.
const isRefusal = (code) => code === 1008 || (code >= 4400 && code < 4500);
const CLOSE_UNAUTHORIZED = 4401;
// Subscribe frames are kept well below the server's frame-size limit.
const SUBSCRIBE_CHUNK = 50;

/** An error reported to `onError`; `fatal` means the watch or socket has stopped. */
export class PollcastError extends Error {
  /**
   * @param {string} code machine-readable reason (`bad_frame`, `reconnecting`, an HTTP `code`…)
   * @param {string} message human-readable reason
   * @param {{task?: string|null, fatal?: boolean, status?: number|null}} [details]
   */
  constructor(code, message, { task = null, fatal = false, status = null } = {}) {
    super(message);
    this.name = 'PollcastError';
    this.code = code;
    this.task = task;
    this.fatal = fatal;
    this.status = status;
  }
}

/**
 * Split a task key into its parts.
 *
 * @param {string | {provider: string, taskId?: string, task_id?: string}} task
 *   `"provider:task_id"` (the task id may itself contain `:`) or an object.
 * @returns {{provider: string, taskId: string, key: string}}
 * @throws {TypeError} when the key has no provider or no task id.
 */
export function parseTask(task) {
  let provider;
  let taskId;
  if (typeof task === 'string') {
    const colon = task.indexOf(':');
    provider = colon > 0 ? task.slice(0, colon) : '';
    taskId = colon > 0 ? task.slice(colon + 1) : '';
  } else if (task && typeof task === 'object') {
    provider = task.provider;
    taskId = task.taskId ?? task.task_id;
  }
  if (!provider || !taskId || typeof provider !== 'string' || typeof taskId !== 'string') {
    throw new TypeError(`task ${JSON.stringify(task)} must look like 'provider:task_id'`);
  }
  return { provider, taskId, key: `${provider}:${taskId}` };
}

/** Whether a state name (or an event) is terminal. */
export function isTerminal(stateOrEvent) {
  const state = typeof stateOrEvent === 'string' ? stateOrEvent : stateOrEvent?.state;
  return TERMINAL_STATES.includes(state);
}

/**
 * The gateway's estimate of the seconds left for a task, counted down to
 * `nowMs` (default: now), or `null` when the gateway has none (or the task
 * ended). The event's `eta_s` is as of its `observed_at`; the count-down
 * uses the local clock against that time, never adding time if the local
 * clock is behind the server's. The gateway computes the estimate (from the
 * progress rate, queue movement and how long the provider's tasks take):
 * use this rather than a guess of your own.
 */
export function etaSeconds(event, nowMs = Date.now()) {
  if (!event || event.terminal || typeof event.eta_s !== 'number') return null;
  const observed = Date.parse(event.observed_at ?? '');
  const age = Number.isFinite(observed) ? Math.max(0, (nowMs - observed) / 1000) : 0;
  return Math.max(0, event.eta_s - age);
}

function trimBase(baseUrl) {
  return String(baseUrl ?? '').replace(/\/+$/, '');
}

function withQuery(url, params) {
  const query = Object.entries(params)
    .filter(([, value]) => value !== undefined && value !== null && value !== '')
    .map(([name, value]) => `${name}=${encodeURIComponent(String(value))}`)
    .join('&');
  return query ? `${url}${url.includes('?') ? '&' : '?'}${query}` : url;
}

/**
 * The SSE URL of one task: `{base}/v1/tasks/{provider}/{task_id}/events`.
 *
 * `token` travels as `?token=` because EventSource cannot set headers;
 * `lastEventId` as `?last_event_id=` (the `Last-Event-ID` header, which the
 * browser only sends on its own reconnects, takes precedence on the server).
 */
export function eventsUrl(baseUrl, task, { token, lastEventId } = {}) {
  const { provider, taskId } = parseTask(task);
  const path = `/v1/tasks/${encodeURIComponent(provider)}/${encodeURIComponent(taskId)}/events`;
  return withQuery(trimBase(baseUrl) + path, { token, last_event_id: lastEventId });
}

/** The current-snapshot URL of one task: `{base}/v1/tasks/{provider}/{task_id}`. */
export function snapshotUrl(baseUrl, task, { token } = {}) {
  const { provider, taskId } = parseTask(task);
  const path = `/v1/tasks/${encodeURIComponent(provider)}/${encodeURIComponent(taskId)}`;
  return withQuery(trimBase(baseUrl) + path, { token });
}

/**
 * The WebSocket URL: `ws(s)://…/v1/ws`. A relative or empty `baseUrl` is
 * resolved against the page's location (browsers).
 */
export function socketUrl(baseUrl, { token } = {}) {
  const base = trimBase(baseUrl);
  let absolute = base;
  if (!/^(https?|wss?):\/\//i.test(base)) {
    const page = globalThis.location?.href;
    if (!page) throw new TypeError(`base URL ${JSON.stringify(baseUrl)} must be absolute here`);
    absolute = trimBase(new URL(base || '/', page).href);
  }
  const url = absolute.replace(/^http/i, 'ws') + '/v1/ws';
  return withQuery(url, { token });
}

/**
 * What one subscriber has seen of one task; decides whether an incoming
 * event is news.
 *
 * - `state`/`progress`: news only if its seq is above the last one delivered.
 * - `snapshot`: replaces what is known unless it repeats the last seq (after a
 *   `resync` notice its seq may be *lower*: the server's state is the truth).
 * - `notice`: always news while the task is not finished; it changes no seq.
 * - Nothing is news once the terminal event was delivered.
 */
export class TaskView {
  /**
   * @param {string} task the task key
   * @param {number|string|null} [lastSeq] the seq already held (resume point)
   */
  constructor(task, lastSeq = null) {
    this.task = task;
    this.seq = lastSeq === null || lastSeq === undefined ? null : Number(lastSeq);
    this.state = null;
    this.last = null;
    this.done = false;
  }

  /** Record `event` if it is news; returns whether it is. */
  absorb(event) {
    if (this.done) return false;
    if (event.event === 'notice') return true;
    if (typeof event.seq !== 'number') return false;
    if (event.event === 'snapshot') {
      if (event.seq === this.seq) return false;
    } else if (this.seq !== null && event.seq <= this.seq) {
      return false;
    }
    this.seq = event.seq;
    this.state = event.state;
    this.last = event;
    this.done = Boolean(event.terminal);
    return true;
  }
}

/** Exponential backoff with full jitter: a random delay in [0, min(max, initial·2^n)]. */
class Backoff {
  constructor({ initialMs = 500, maxMs = 15000, random = Math.random } = {}) {
    this.initialMs = initialMs;
    this.maxMs = maxMs;
    this.random = random;
    this.attempt = 0;
  }

  next() {
    const ceiling = Math.min(this.maxMs, this.initialMs * 2 ** this.attempt);
    this.attempt += 1;
    // A small floor keeps a flapping server from being hammered in a tight loop.
    return Math.max(50, Math.round(this.random() * ceiling));
  }

  reset() {
    this.attempt = 0;
  }
}

/**
 * Hand an accepted event to the callbacks: `onEvent`, then `onState` if the
 * state changed, then `onDone` after the terminal event. Returns whether the
 * event was news.
 */
function deliver(view, event, handlers, beforeDone) {
  const previous = view.state;
  if (!view.absorb(event)) return false;
  handlers.onEvent?.(event);
  if (event.event !== 'notice' && event.state !== previous) {
    handlers.onState?.(event.state, event, previous);
  }
  if (view.done) {
    beforeDone?.();
    handlers.onDone?.(event);
  }
  return true;
}

async function problemDetail(reply) {
  try {
    const body = await reply.json();
    return { code: body.code ?? `http_${reply.status}`, message: body.detail ?? body.title ?? '' };
  } catch {
    return { code: `http_${reply.status}`, message: reply.statusText || `HTTP ${reply.status}` };
  }
}

/**
 * Follow one task over Server-Sent Events until it ends.
 *
 * The browser's EventSource reconnects by itself and resumes with
 * `Last-Event-ID`. When it gives up (an HTTP error such as a draining
 * server's 503), this function finds out why with one `fetch` and either
 * reconnects with backoff, stops with a fatal `onError` (4xx), or, on
 * `204 No Content` (the resume point already was the terminal event), calls
 * `onDone` with the task's snapshot (or `null` if it cannot be fetched).
 *
 * After the terminal event the EventSource is closed, so it never reconnects.
 *
 * @param {string} baseUrl gateway base URL, e.g. `https://pollcast.example.com` (`''` = same origin)
 * @param {string | {provider: string, taskId: string}} task `"provider:task_id"`
 * @param {object} [options] see `WatchOptions` in pollcast.d.ts
 * @returns {{task: string, readonly lastSeq: number|null, readonly state: string|null,
 *   readonly closed: boolean, close(): void}}
 */
export function watchTask(baseUrl, task, options = {}) {
  const { token, onEvent, onState, onDone, onError } = options;
  const EventSourceImpl = options.EventSource ?? globalThis.EventSource;
  const fetchImpl = options.fetch ?? globalThis.fetch?.bind(globalThis);
  if (typeof EventSourceImpl !== 'function') {
    throw new TypeError('no EventSource here: pass options.EventSource (e.g. the "eventsource" package)');
  }
  const { key } = parseTask(task);
  const view = new TaskView(key, options.lastEventId);
  const backoff = new Backoff(options.backoff);
  const handlers = { onEvent, onState, onDone };
  let source = null;
  let timer = null;
  let closed = false;

  const stop = () => {
    closed = true;
    clearTimeout(timer);
    if (source) source.close();
    source = null;
  };

  const fail = (error) => {
    if (error.fatal) stop();
    onError?.(error);
  };

  const receive = (message) => {
    if (closed) return;
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      fail(new PollcastError('bad_event', 'an SSE message was not JSON', { task: key }));
      return;
    }
    backoff.reset();
    deliver(view, event, handlers, stop);
  };

  const open = () => {
    if (closed) return;
    const url = eventsUrl(baseUrl, key, { token, lastEventId: view.seq });
    const current = new EventSourceImpl(url);
    source = current;
    for (const kind of EVENT_KINDS) current.addEventListener(kind, receive);
    current.addEventListener('error', () => {
      if (closed || source !== current) return;
      if (current.readyState === ES_CLOSED) {
        source = null;
        current.close();
        recover();
      } else {
        fail(new PollcastError('reconnecting', 'connection lost; reconnecting', { task: key }));
      }
    });
  };

  // EventSource does not say why it gave up; ask the same URL once.
  const recover = async () => {
    const url = eventsUrl(baseUrl, key, { token, lastEventId: view.seq });
    let status = 0;
    let detail = null;
    if (fetchImpl) {
      const abort = new AbortController();
      try {
        const reply = await fetchImpl(url, {
          headers: { accept: 'text/event-stream' },
          signal: abort.signal,
          cache: 'no-store',
        });
        status = reply.status;
        if (status >= 400) detail = await problemDetail(reply);
      } catch {
        status = 0; // network error: the server is away
      } finally {
        abort.abort();
      }
    }
    if (closed) return;
    if (status === 204) {
      const snapshot = await fetchSnapshot(fetchImpl, snapshotUrl(baseUrl, key, { token }));
      if (closed) return;
      stop();
      onDone?.(snapshot && snapshot.terminal ? snapshot : null);
    } else if (status >= 400 && status < 500 && status !== 408 && status !== 429) {
      fail(new PollcastError(detail.code, detail.message, { task: key, fatal: true, status }));
    } else {
      fail(new PollcastError('reconnecting', `stream unavailable (${status || 'network error'}); retrying`, {
        task: key,
        status: status || null,
      }));
      timer = setTimeout(open, backoff.next());
    }
  };

  open();
  return {
    task: key,
    get lastSeq() {
      return view.seq;
    },
    get state() {
      return view.state;
    },
    get closed() {
      return closed;
    },
    close: stop,
  };
}

async function fetchSnapshot(fetchImpl, url) {
  if (!fetchImpl) return null;
  try {
    const reply = await fetchImpl(url, { headers: { accept: 'application/json' }, cache: 'no-store' });
    return reply.ok ? await reply.json() : null;
  } catch {
    return null;
  }
}

/** The Event subclass PollcastSocket dispatches; the payload is in `detail`. */
export class PollcastEvent extends Event {
  constructor(type, detail) {
    super(type);
    this.detail = detail;
  }
}

/**
 * Many tasks over one WebSocket (`/v1/ws`), reconnecting by itself.
 *
 * After a reconnect every unfinished task is subscribed again with
 * `since` = the last seq delivered, so the server replays exactly what was
 * missed. Events are delivered to per-task handlers ({@link PollcastSocket#watch}),
 * to the constructor's callbacks, and as DOM-style events on the socket
 * itself: `event`, `state`, `done`, `status`, `error`, `subscribed`,
 * `unsubscribed` (payload in `event.detail`).
 */
export class PollcastSocket extends EventTarget {
  #base;
  #options;
  #WebSocket;
  #backoff;
  #views = new Map(); // task → TaskView, for every task subscribed
  #handlers = new Map(); // task → Set of per-task handler objects
  #ws = null;
  #generation = 0;
  #status = 'connecting';
  #timer = null;
  #heartbeat = null;
  #heard = false;
  #pings = [];

  /**
   * @param {string} baseUrl gateway base URL (`''` = same origin in a browser)
   * @param {object} [options] see `SocketOptions` in pollcast.d.ts
   */
  constructor(baseUrl, options = {}) {
    super();
    this.#base = baseUrl;
    this.#options = options;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new TypeError('no WebSocket here: pass options.WebSocket (e.g. the "ws" package)');
    }
    this.#backoff = new Backoff(options.backoff);
    this.#connect();
  }

  /** `connecting`, `open`, `reconnecting` or `closed`. */
  get status() {
    return this.#status;
  }

  /** The tasks subscribed (finished ones included until unsubscribed). */
  get tasks() {
    return [...this.#views.keys()];
  }

  /** The last seq delivered for `task`, or `null`. */
  lastSeq(task) {
    return this.#views.get(parseTask(task).key)?.seq ?? null;
  }

  /** The last state delivered for `task`, or `null`. */
  stateOf(task) {
    return this.#views.get(parseTask(task).key)?.state ?? null;
  }

  /**
   * Follow tasks. `since` maps a task to the seq already held (resume point).
   * Subscribing to a task again is a no-op.
   */
  subscribe(tasks, { since = {} } = {}) {
    const fresh = [];
    for (const task of [tasks].flat()) {
      const { key } = parseTask(task);
      if (this.#views.has(key)) continue;
      this.#views.set(key, new TaskView(key, since[key] ?? since[task] ?? null));
      fresh.push(key);
    }
    this.#sendSubscribe(fresh);
  }

  /** Stop following tasks (and forget their handlers). */
  unsubscribe(tasks) {
    const keys = [tasks].flat().map((task) => parseTask(task).key);
    const live = keys.filter((key) => this.#views.has(key) && !this.#views.get(key).done);
    for (const key of keys) {
      this.#views.delete(key);
      this.#handlers.delete(key);
    }
    if (live.length) this.#send({ op: 'unsubscribe', tasks: live });
  }

  /**
   * Follow one task with its own callbacks (`onEvent`, `onState`, `onDone`,
   * `onError`); `since` resumes after a seq already held. The returned
   * handle's `close()` removes the callbacks and, when no other handle needs
   * the task, unsubscribes.
   */
  watch(task, { since, ...handlers } = {}) {
    const { key } = parseTask(task);
    let set = this.#handlers.get(key);
    if (!set) this.#handlers.set(key, (set = new Set()));
    set.add(handlers);
    const view = this.#views.get(key);
    if (!view) {
      this.subscribe(key, { since: since === undefined ? {} : { [key]: since } });
    } else if (view.last) {
      // A late watcher of a task already followed starts from its latest event.
      const { last } = view;
      queueMicrotask(() => {
        handlers.onEvent?.(last);
        handlers.onState?.(last.state, last, null);
        if (view.done) handlers.onDone?.(last);
      });
    }
    return {
      task: key,
      close: () => {
        const current = this.#handlers.get(key);
        if (!current?.delete(handlers) || current.size) return;
        this.unsubscribe(key);
      },
    };
  }

  /** Round-trip time to the server in ms; rejects if not connected. */
  ping() {
    if (!this.#send({ op: 'ping' })) {
      return Promise.reject(new PollcastError('not_connected', 'the socket is not open'));
    }
    return new Promise((resolve, reject) => {
      this.#pings.push({ at: Date.now(), resolve, reject });
    });
  }

  /** Close for good: no reconnect, no more callbacks. */
  close() {
    if (this.#status === 'closed') return;
    this.#drop(CLOSE_NORMAL, 'client closed');
    this.#setStatus('closed');
  }

  // -- connection ------------------------------------------------------------

  async #connect() {
    if (this.#status === 'closed') return;
    const generation = ++this.#generation;
    let token = this.#options.token;
    if (typeof token === 'function') {
      try {
        token = await token();
      } catch (error) {
        if (generation !== this.#generation) return;
        this.#report(new PollcastError('token', `could not get a token: ${error}`));
        this.#retry();
        return;
      }
      if (generation !== this.#generation || this.#status === 'closed') return;
    }
    let ws;
    try {
      ws = new this.#WebSocket(socketUrl(this.#base, { token }));
    } catch (error) {
      this.#report(new PollcastError('connect', String(error?.message ?? error), { fatal: true }));
      this.#setStatus('closed');
      return;
    }
    this.#ws = ws;
    const current = () => generation === this.#generation;
    ws.addEventListener('open', () => current() && this.#opened());
    ws.addEventListener('message', (message) => {
      if (!current()) return;
      this.#heard = true;
      this.#receive(typeof message.data === 'string' ? message.data : String(message.data));
    });
    ws.addEventListener('close', (closing) => current() && this.#closed(closing.code, closing.reason));
    // An 'error' is always followed by 'close'; that is where we act.
    ws.addEventListener('error', () => {});
  }

  #opened() {
    this.#setStatus('open');
    const pending = [...this.#views.values()].filter((view) => !view.done);
    this.#sendSubscribe(pending.map((view) => view.task));
    const every = this.#options.heartbeatMs ?? 30000;
    clearInterval(this.#heartbeat);
    this.#heard = true;
    if (every > 0) {
      // Browsers expose no protocol-level ping: a silent connection gets an
      // application ping, and one that stays silent for a whole period is dead.
      this.#heartbeat = setInterval(() => {
        if (this.#heard) {
          this.#heard = false;
          this.#send({ op: 'ping' });
        } else {
          this.#drop(CLOSE_NO_HEARTBEAT, 'no heartbeat');
          this.#retry();
        }
      }, every);
    }
  }

  #closed(code, reason) {
    this.#ws = null;
    this.#detach();
    if (this.#status === 'closed') return;
    // An expired token is not fatal when there is a function to ask for a fresh one.
    const renewable = code === CLOSE_UNAUTHORIZED && typeof this.#options.token === 'function';
    if (isRefusal(code) && !renewable) {
      this.#report(new PollcastError('refused', reason || `closed with code ${code}`, { fatal: true }));
      this.#setStatus('closed');
      return;
    }
    this.#retry();
  }

  #retry() {
    if (this.#status === 'closed') return;
    this.#setStatus('reconnecting');
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#connect(), this.#backoff.next());
  }

  /** Forget the current connection (its late events are ignored) and close it. */
  #drop(code, reason) {
    this.#generation += 1;
    clearTimeout(this.#timer);
    const ws = this.#ws;
    this.#ws = null;
    this.#detach();
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        // already closing
      }
    }
  }

  #detach() {
    clearInterval(this.#heartbeat);
    this.#heartbeat = null;
    const pings = this.#pings.splice(0);
    for (const ping of pings) ping.reject(new PollcastError('disconnected', 'connection lost'));
  }

  #send(message) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== WS_OPEN) return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  #sendSubscribe(keys) {
    for (let i = 0; i < keys.length; i += SUBSCRIBE_CHUNK) {
      const chunk = keys.slice(i, i + SUBSCRIBE_CHUNK);
      const since = {};
      for (const key of chunk) {
        const seq = this.#views.get(key)?.seq;
        if (seq !== null && seq !== undefined) since[key] = seq;
      }
      const message = { op: 'subscribe', tasks: chunk };
      if (Object.keys(since).length) message.since = since;
      if (!this.#send(message)) return; // sent again on (re)connect
    }
  }

  // -- frames ----------------------------------------------------------------

  #receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this.#report(new PollcastError('bad_frame', 'a frame from the server was not JSON'));
      return;
    }
    switch (frame.event) {
      case 'pong': {
        const ping = this.#pings.shift();
        ping?.resolve(Date.now() - ping.at);
        return;
      }
      case 'subscribed':
      case 'unsubscribed':
        this.#backoff.reset();
        this.#emit(frame.event, frame.tasks ?? []);
        return;
      case 'error':
        this.#serverError(frame);
        return;
      default:
        this.#event(frame);
    }
  }

  #event(event) {
    const view = this.#views.get(event.task);
    if (!view) return; // unsubscribed meanwhile
    this.#backoff.reset();
    const local = [...(this.#handlers.get(event.task) ?? [])];
    const global = this.#options;
    const handlers = {
      onEvent: (e) => {
        global.onEvent?.(e);
        for (const h of local) h.onEvent?.(e);
        this.#emit('event', e);
      },
      onState: (state, e, previous) => {
        global.onState?.(state, e, previous);
        for (const h of local) h.onState?.(state, e, previous);
        this.#emit('state', { task: e.task, state, previous, event: e });
      },
      onDone: (e) => {
        global.onDone?.(e);
        for (const h of local) h.onDone?.(e);
        this.#emit('done', e);
      },
    };
    deliver(view, event, handlers);
  }

  #serverError(frame) {
    const task = frame.task ?? null;
    // An error naming a task refuses that subscription: do not ask again on reconnect.
    const refused = task !== null && this.#views.has(task) && !this.#views.get(task).done;
    const error = new PollcastError(frame.code ?? 'error', frame.message ?? '', {
      task,
      fatal: refused,
    });
    const local = task === null ? [] : [...(this.#handlers.get(task) ?? [])];
    if (refused) {
      this.#views.delete(task);
      this.#handlers.delete(task);
    }
    for (const h of local) h.onError?.(error);
    this.#report(error);
  }

  #report(error) {
    this.#options.onError?.(error);
    this.#emit('error', error);
  }

  #setStatus(status) {
    if (status === this.#status) return;
    this.#status = status;
    this.#options.onStatus?.(status);
    this.#emit('status', { status });
  }

  #emit(type, detail) {
    this.dispatchEvent(new PollcastEvent(type, detail));
  }
}
