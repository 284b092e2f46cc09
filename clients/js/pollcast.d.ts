/**
 * pollcast client — types for pollcast.js (docs/protocol.md).
 */

/** Normalized task state. */
export type TaskState =
  | 'queued'
  | 'running'
  | 'succeeded'
  | 'failed'
  | 'cancelled'
  | 'expired'
  | 'rejected'
  | 'unknown';

export type TerminalState = 'succeeded' | 'failed' | 'cancelled' | 'expired' | 'rejected';

/** `snapshot` first after subscribing, `state` on a state change, `progress` within a state, `notice` otherwise. */
export type EventKind = 'snapshot' | 'state' | 'progress' | 'notice';

export interface TaskResult {
  /** Absolute result URLs (images, models, videos…), valid for the provider's result window. */
  urls: string[];
  /** Named result files (e.g. `{"ply": "https://…"}`). */
  files: Record<string, string>;
  meta?: Record<string, unknown>;
}

export interface TaskErrorInfo {
  code: string;
  message: string;
}

/** The event object of the wire contract (SSE `data:`, WebSocket frame, NDJSON line). */
export interface TaskEvent {
  event: EventKind;
  /** `"provider:task_id"` */
  task: string;
  /** Grows by one per `state`/`progress` event of the task; the SSE `id:`. */
  seq: number;
  state: TaskState;
  terminal: boolean;
  progress: number | null;
  position: number | null;
  message: string | null;
  result: TaskResult | null;
  error: TaskErrorInfo | null;
  upstream: Record<string, unknown> | null;
  updated_at: string;
  observed_at: string | null;
  /**
   * The gateway's estimate of the seconds left, as of `observed_at`, or `null`
   * when it has none (always `null` once terminal). Count it down with `etaSeconds`.
   * Absent from a gateway older than the field.
   */
  eta_s?: number | null;
  /** Only on `notice` events: `server_draining`, `history_gap`, `resync`, `upstream_degraded`… */
  code?: string;
}

export type TaskRef = string | { provider: string; taskId: string } | { provider: string; task_id: string };

export declare const EVENT_KINDS: readonly EventKind[];
export declare const TERMINAL_STATES: readonly TerminalState[];

/** An error passed to `onError`; `fatal` means the watch or socket has stopped for good. */
export declare class PollcastError extends Error {
  constructor(
    code: string,
    message: string,
    details?: { task?: string | null; fatal?: boolean; status?: number | null },
  );
  readonly name: 'PollcastError';
  /** `reconnecting`, `bad_event`, `bad_frame`, `refused`, or the server's error code. */
  readonly code: string;
  readonly task: string | null;
  readonly fatal: boolean;
  /** The HTTP status that ended an SSE watch, when there was one. */
  readonly status: number | null;
}

export declare function parseTask(task: TaskRef): { provider: string; taskId: string; key: string };
/** `event.eta_s` counted down to `nowMs` (default now); `null` if unknown or terminal. */
export declare function etaSeconds(event: TaskEvent | null | undefined, nowMs?: number): number | null;
export declare function isTerminal(stateOrEvent: string | { state?: string } | null | undefined): boolean;
export declare function eventsUrl(
  baseUrl: string,
  task: TaskRef,
  options?: { token?: string; lastEventId?: number | string | null },
): string;
export declare function snapshotUrl(baseUrl: string, task: TaskRef, options?: { token?: string }): string;
export declare function socketUrl(baseUrl: string, options?: { token?: string }): string;

/** What one subscriber has seen of one task; drops what it already has. */
export declare class TaskView {
  constructor(task: string, lastSeq?: number | string | null);
  readonly task: string;
  seq: number | null;
  state: TaskState | null;
  last: TaskEvent | null;
  done: boolean;
  /** Record the event if it is news; returns whether it is. */
  absorb(event: TaskEvent): boolean;
}

export interface TaskHandlers {
  /** Every new event (snapshot, state, progress, notice), once each, in seq order. */
  onEvent?: (event: TaskEvent) => void;
  /** The state changed (the first snapshot counts: `previous` is then `null`). */
  onState?: (state: TaskState, event: TaskEvent, previous: TaskState | null) => void;
  /** After the terminal event. */
  onDone?: (event: TaskEvent) => void;
}

export interface BackoffOptions {
  /** First reconnect delay ceiling (ms), doubled per failed attempt. Default 500. */
  initialMs?: number;
  /** Largest delay ceiling (ms). Default 15000. */
  maxMs?: number;
  /** Random source in [0, 1) for the full jitter. Default Math.random. */
  random?: () => number;
}

export interface WatchOptions extends Omit<TaskHandlers, 'onDone'> {
  /** Subscriber token, sent as `?token=` (EventSource cannot set headers). */
  token?: string;
  /** Seq already held: only later events are delivered. */
  lastEventId?: number | string | null;
  /**
   * After the terminal event (the EventSource is already closed). `null` only
   * when the server answered 204 (the resume point was already terminal) and
   * the snapshot could not be fetched.
   */
  onDone?: (event: TaskEvent | null) => void;
  /** Connection trouble (`fatal: false`, reconnecting) or the end of the watch (`fatal: true`). */
  onError?: (error: PollcastError) => void;
  /** An EventSource implementation (Node: `import { EventSource } from 'eventsource'`). */
  EventSource?: new (url: string) => EventSourceLike;
  /** A fetch implementation, used to find out why a stream was refused. Default globalThis.fetch. */
  fetch?: typeof fetch;
  backoff?: BackoffOptions;
}

export interface EventSourceLike {
  readonly readyState: number;
  addEventListener(type: string, listener: (event: { data: string }) => void): void;
  close(): void;
}

export interface WatchHandle {
  readonly task: string;
  /** Seq of the last event delivered, or null. */
  readonly lastSeq: number | null;
  readonly state: TaskState | null;
  /** True after the terminal event, a fatal error, or close(). */
  readonly closed: boolean;
  close(): void;
}

/**
 * Follow one task over Server-Sent Events until its terminal event, then
 * close the EventSource so the browser does not reconnect.
 */
export declare function watchTask(baseUrl: string, task: TaskRef, options?: WatchOptions): WatchHandle;

export type SocketStatus = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface SocketOptions extends TaskHandlers {
  /**
   * Subscriber token (`?token=`). A function is asked again before every
   * (re)connect, so a socket refused with close code 4401 (expired or invalid
   * token) reconnects with a fresh one; with a plain string that refusal is fatal.
   */
  token?: string | (() => string | Promise<string>);
  /** A WebSocket implementation (Node 20: `import WebSocket from 'ws'`). */
  WebSocket?: new (url: string) => WebSocketLike;
  /** Ping a silent connection this often and drop it if it stays silent (ms; 0 = off). Default 30000. */
  heartbeatMs?: number;
  backoff?: BackoffOptions;
  onError?: (error: PollcastError) => void;
  onStatus?: (status: SocketStatus) => void;
}

export interface WebSocketLike {
  readonly readyState: number;
  addEventListener(type: string, listener: (event: any) => void): void;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface SocketWatchHandle {
  readonly task: string;
  /** Remove these callbacks; unsubscribe when no other handle follows the task. */
  close(): void;
}

/** The Event subclass PollcastSocket dispatches; the payload is in `detail`. */
export declare class PollcastEvent<T = unknown> extends Event {
  constructor(type: string, detail: T);
  readonly detail: T;
}

export interface SocketEventMap {
  event: PollcastEvent<TaskEvent>;
  state: PollcastEvent<{ task: string; state: TaskState; previous: TaskState | null; event: TaskEvent }>;
  done: PollcastEvent<TaskEvent>;
  status: PollcastEvent<{ status: SocketStatus }>;
  error: PollcastEvent<PollcastError>;
  subscribed: PollcastEvent<string[]>;
  unsubscribed: PollcastEvent<string[]>;
}

/**
 * Many tasks over one WebSocket (`/v1/ws`), reconnecting with backoff and
 * jitter, and resuming each unfinished task with `since` = its last seq.
 */
export declare class PollcastSocket extends EventTarget {
  constructor(baseUrl: string, options?: SocketOptions);
  readonly status: SocketStatus;
  readonly tasks: string[];
  lastSeq(task: TaskRef): number | null;
  stateOf(task: TaskRef): TaskState | null;
  subscribe(tasks: TaskRef | TaskRef[], options?: { since?: Record<string, number> }): void;
  unsubscribe(tasks: TaskRef | TaskRef[]): void;
  watch(
    task: TaskRef,
    handlers?: TaskHandlers & { since?: number; onError?: (error: PollcastError) => void },
  ): SocketWatchHandle;
  /** Round-trip time in ms; rejects when not connected. */
  ping(): Promise<number>;
  close(): void;
  addEventListener<K extends keyof SocketEventMap>(
    type: K,
    listener: (event: SocketEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof SocketEventMap>(
    type: K,
    listener: (event: SocketEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}
