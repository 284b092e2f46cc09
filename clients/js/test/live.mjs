// Live servers for the client tests: a running gateway and simulator (started by
// tests/clients/js/test_node.py) plus gateways this process starts, kills and restarts.
//
//   POLLCAST_URL       a gateway wired to the simulator (in-memory state)
//   POLLCAST_SIM_URL   the simulator
//   POLLCAST_SERVE     JSON argv of `pollcast serve --config …` whose config keeps
//                      its state in ${POLLCAST_STATE_DB}; --port is appended here
//   POLLCAST_TOKEN_URL a gateway in auth mode "token", and POLLCAST_API_KEY one of its keys
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run these tests through tests/clients/js/test_node.py`);
  }
  return value;
}

export const GATEWAY_URL = required('POLLCAST_URL');
export const SIM_URL = required('POLLCAST_SIM_URL');

/**
 * Create a simulator task; returns its gateway key `provider:task_id`.
 * `held`: its timeline starts only at `releaseSimTasks()`.
 */
export async function createSimTask(provider, timeline, { held = false } = {}) {
  const reply = await fetch(`${SIM_URL}/_sim/tasks`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ provider, timeline, held }),
  });
  if (!reply.ok) throw new Error(`sim refused the task: ${reply.status} ${await reply.text()}`);
  const body = await reply.json();
  return `${provider}:${body.task_id}`;
}

async function simTaskAction(task, action) {
  const [provider, ...rest] = task.split(':');
  const id = encodeURIComponent(rest.join(':'));
  const reply = await fetch(`${SIM_URL}/_sim/tasks/${provider}/${id}/${action}`, { method: 'POST' });
  if (!reply.ok) throw new Error(`sim refused to ${action} ${task}: ${reply.status} ${await reply.text()}`);
}

/** Let held timelines go on from where they stopped. */
export async function releaseSimTasks(tasks) {
  await Promise.all(tasks.map((task) => simTaskAction(task, 'release')));
}

/**
 * Stop the tasks' timelines where they are while `during()` runs, then let
 * them go on: a gateway restart that takes seconds on a loaded machine
 * then misses no step of a timeline the test counts on.
 */
export async function withTasksHeld(tasks, during) {
  await Promise.all(tasks.map((task) => simTaskAction(task, 'hold')));
  try {
    return await during();
  } finally {
    await releaseSimTasks(tasks);
  }
}

/** Queued, then `running` with rising progress every `gapS` seconds from `startS`, then `succeeded`. */
export function stepped(steps, gapS, startS = 0) {
  const timeline = [{ at: 0, state: 'queued', position: 2 }];
  for (let i = 0; i < steps; i++) {
    const progress = Math.round((100 * (i + 1)) / (steps + 1));
    timeline.push({ at: startS + (i + 1) * gapS, state: 'running', progress });
  }
  timeline.push({ at: startS + (steps + 1) * gapS, state: 'succeeded' });
  return timeline;
}

/**
 * Every stored event of a finished task, read back from the gateway
 * (`?last_event_id=0` replays the whole history, then the stream ends).
 */
export async function history(baseUrl, task) {
  const [provider, ...rest] = task.split(':');
  const url = `${baseUrl}/v1/tasks/${provider}/${encodeURIComponent(rest.join(':'))}/events?last_event_id=0`;
  const reply = await fetch(url, { signal: AbortSignal.timeout(15000) });
  if (reply.status !== 200) throw new Error(`history of ${task}: HTTP ${reply.status}`);
  const text = await reply.text();
  return text
    .split('\n')
    .filter((line) => line.startsWith('data: '))
    .map((line) => JSON.parse(line.slice(6)))
    .filter((event) => event.event === 'state' || event.event === 'progress');
}

/** What must match between a client and the server's history. */
export function transitions(events) {
  return events.map((e) => [e.seq, e.event, e.state, e.progress, e.position]);
}

/** Resolve when `predicate()` holds; reject after `timeoutMs`. */
export async function until(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

export async function freePort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

// A starved machine (the whole suite on two cores) has taken over 20 s to
// import and start a gateway; a healthy one takes well under a second.
const START_TIMEOUT_MS = 60000;

/** `pollcast serve` as a child process with an SQLite state file that survives restarts. */
export class GatewayProcess {
  constructor() {
    this.argv = JSON.parse(required('POLLCAST_SERVE'));
    this.dir = mkdtempSync(join(tmpdir(), 'pollcast-js-'));
    this.port = null;
    this.child = null;
    this.timings = [];
  }

  #mark(what, since) {
    this.timings.push(`${what} ${((performance.now() - since) / 1000).toFixed(2)} s`);
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    const began = performance.now();
    this.port ??= await freePort();
    const log = openSync(join(this.dir, 'gateway.log'), 'a');
    const [command, ...args] = this.argv;
    const child = spawn(command, [...args, '--port', String(this.port)], {
      env: { ...process.env, POLLCAST_STATE_DB: join(this.dir, 'state.db'), PYTHONUNBUFFERED: '1' },
      stdio: ['ignore', log, log],
    });
    this.child = child;
    child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`gateway exited early:\n${this.log()}`);
      try {
        const reply = await fetch(`${this.url}/readyz`, { signal: AbortSignal.timeout(500) });
        if (reply.status === 200) {
          this.#mark('ready after', began);
          return this;
        }
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    throw new Error(
      `gateway did not become ready within ${START_TIMEOUT_MS / 1000} s:\n${this.log()}`,
    );
  }

  /** Send `signal` and wait for the process to exit. */
  async stop(signal = 'SIGKILL') {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const began = performance.now();
    child.kill(signal);
    await child.exited;
    this.#mark(`${signal} exit after`, began);
    this.child = null;
  }

  /** The end of the gateway's log, after how long each start and stop took. */
  log() {
    let text;
    try {
      text = readFileSync(join(this.dir, 'gateway.log'), 'utf8').slice(-3000);
    } catch {
      text = '(no log)';
    }
    return `${this.timings.join(', ')}\n${text}`;
  }

  async dispose() {
    await this.stop('SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * An HTTP reverse proxy in front of a gateway that can be told to answer 503
 * and to cut its open connections — what a load balancer does during a deploy.
 */
export class FlakyProxy {
  constructor(target) {
    this.target = new URL(target);
    this.failing = false;
    this.refused = 0;
    this.sockets = new Set();
    this.server = createHttpServer((req, res) => this.#handle(req, res));
    this.server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
  }

  #handle(req, res) {
    if (this.failing) {
      this.refused += 1;
      res.writeHead(503, { 'content-type': 'application/problem+json', 'retry-after': '1' });
      res.end(JSON.stringify({ status: 503, title: 'backend restarting', code: 'unavailable' }));
      return;
    }
    const upstream = httpRequest(
      { host: this.target.hostname, port: this.target.port, path: req.url, method: req.method, headers: req.headers },
      (reply) => {
        res.writeHead(reply.statusCode, reply.headers);
        reply.pipe(res);
      },
    );
    upstream.on('error', () => res.destroy());
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  }

  async start() {
    await new Promise((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return this;
  }

  get url() {
    return `http://127.0.0.1:${this.server.address().port}`;
  }

  /** Drop every open client connection (streams end mid-way). */
  cutConnections() {
    for (const socket of this.sockets) socket.destroy();
  }

  async close() {
    this.cutConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
