// PollcastSocket over a live gateway: multiplexing, errors, ping, resume across restarts.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import WebSocket from 'ws';

import { PollcastSocket } from '../pollcast.js';
import {
  GATEWAY_URL,
  GatewayProcess,
  createSimTask,
  releaseSimTasks,
  history,
  stepped,
  transitions,
  until,
  withTasksHeld,
} from './live.mjs';

const QUICK_BACKOFF = { initialMs: 200, maxMs: 1000 };

/** A `ws` WebSocket that keeps every connection and every frame sent. */
function recordingWebSocket() {
  const opened = [];
  const sent = [];
  class RecordedWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      opened.push(this);
    }

    send(data, ...rest) {
      sent.push(JSON.parse(data));
      return super.send(data, ...rest);
    }
  }
  return { RecordedWebSocket, opened, sent };
}

/** Per-task recorders for `socket.watch`. */
function recorder() {
  const got = { events: [], states: [], done: [], errors: [] };
  got.handlers = {
    onEvent: (event) => got.events.push(event),
    onState: (state, event, previous) => got.states.push([previous, state]),
    onDone: (event) => got.done.push(event),
    onError: (error) => got.errors.push(error),
  };
  return got;
}

function assertExactlyHistory(task, got, stored) {
  const [first, ...rest] = got.events.filter((e) => e.event !== 'notice');
  assert.equal(first.event, 'snapshot', task);
  const terminal = stored.at(-1).seq;
  const expected = Array.from({ length: terminal - first.seq }, (_, i) => first.seq + 1 + i);
  assert.deepEqual(rest.map((e) => e.seq), expected, `${task}: every seq once, in order`);
  assert.deepEqual(
    transitions(rest),
    transitions(stored.filter((e) => e.seq > first.seq)),
    `${task}: the events the server stored`,
  );
  assert.equal(got.done.length, 1, `${task}: onDone once`);
  assert.deepEqual(got.done[0], got.events.at(-1));
  assert.ok(got.events.every((e) => e.task === task), `${task}: only its own events`);
}

test('PollcastSocket follows many tasks over one connection', async () => {
  // Held until the socket has each one's snapshot: every timeline starts once watched.
  const held = { held: true };
  const tasks = [
    await createSimTask(
      'ailab',
      [
        { at: 0, state: 'queued' },
        { at: 0.4, state: 'running' },
        { at: 1.0, state: 'succeeded' },
      ],
      held,
    ),
    await createSimTask(
      'tryon',
      [
        // A second per stage: long enough for a poll to land in each on a busy machine.
        { at: 0, state: 'queued', position: 3 },
        { at: 1.0, state: 'queued', position: 1 },
        { at: 2.0, state: 'running' },
        { at: 2.6, state: 'succeeded' },
      ],
      held,
    ),
    await createSimTask('videoproc', stepped(3, 0.3), held),
  ];
  const { RecordedWebSocket, opened } = recordingWebSocket();
  const errors = [];
  const everything = [];
  const finished = [];
  const socket = new PollcastSocket(GATEWAY_URL, {
    WebSocket: RecordedWebSocket,
    onError: (error) => errors.push(error),
  });
  socket.addEventListener('event', (e) => everything.push(e.detail));
  socket.addEventListener('done', (e) => finished.push(e.detail.task));
  try {
    const got = Object.fromEntries(tasks.map((task) => [task, recorder()]));
    for (const task of tasks) socket.watch(task, got[task].handlers);
    socket.watch('nosuchprovider:1', recorder().handlers);

    const polled = (t) => got[t].events.some((e) => e.event !== 'notice' && e.state !== 'unknown');
    await until(() => tasks.every(polled), 10000, 'every first state');
    await releaseSimTasks(tasks);
    assert.equal(socket.status, 'open');
    const rtt = await socket.ping();
    assert.ok(rtt >= 0 && rtt < 5000, `ping round trip ${rtt} ms`);
    await until(() => finished.length === tasks.length, 15000, 'every terminal event');

    for (const task of tasks) {
      assertExactlyHistory(task, got[task], await history(GATEWAY_URL, task));
      assert.equal(socket.stateOf(task), 'succeeded');
      assert.equal(socket.lastSeq(task), got[task].done[0].seq);
    }
    const queue = got[tasks[1]].events.map((e) => e.position).filter((p) => p !== null);
    assert.ok(queue.includes(3) && queue.includes(1), `queue positions seen: ${queue}`);
    assert.deepEqual(finished.sort(), [...tasks].sort());
    assert.equal(everything.length, tasks.reduce((n, t) => n + got[t].events.length, 0));

    const refused = errors.find((e) => e.task === 'nosuchprovider:1');
    assert.ok(refused, 'the server refused the bad key with an error frame');
    assert.equal(refused.fatal, true);
    assert.ok(!socket.tasks.includes('nosuchprovider:1'), 'a refused task is not kept');
    assert.equal(opened.length, 1, 'one connection for everything');
  } finally {
    socket.close();
  }
  assert.equal(socket.status, 'closed');
});

test('PollcastSocket drops frames a connection delivers twice', async () => {
  const task = await createSimTask('videoproc', stepped(3, 0.25));
  // A transport that hands every frame to the client twice (a misbehaving proxy).
  class Stuttering extends WebSocket {
    addEventListener(type, listener, options) {
      const twice = type === 'message' ? (m) => (listener(m), listener(m)) : listener;
      super.addEventListener(type, twice, options);
    }
  }
  const socket = new PollcastSocket(GATEWAY_URL, { WebSocket: Stuttering });
  try {
    const got = recorder();
    socket.watch(task, got.handlers);
    await until(() => got.done.length > 0, 15000, 'the terminal event');
    assertExactlyHistory(task, got, await history(GATEWAY_URL, task));
  } finally {
    socket.close();
  }
});

test('PollcastSocket unsubscribes when the last watcher of a task lets go', async () => {
  const task = await createSimTask('ailab', [{ at: 0, state: 'running' }]);
  const { RecordedWebSocket, sent } = recordingWebSocket();
  const socket = new PollcastSocket(GATEWAY_URL, { WebSocket: RecordedWebSocket });
  const unsubscribed = [];
  socket.addEventListener('unsubscribed', (e) => unsubscribed.push(...e.detail));
  try {
    const a = recorder();
    const b = recorder();
    const first = socket.watch(task, a.handlers);
    await until(() => a.states.some(([, s]) => s === 'running'), 10000, 'running');
    const second = socket.watch(task, b.handlers);
    await until(() => b.events.length > 0, 5000, 'the late watcher catching up');
    assert.equal(b.events[0].state, 'running', 'a late watcher starts from the latest event');
    first.close();
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.ok(!sent.some((m) => m.op === 'unsubscribe'), 'still watched by the second handle');
    second.close();
    await until(() => unsubscribed.includes(task), 5000, 'the unsubscribed frame');
    assert.deepEqual(sent.filter((m) => m.op === 'unsubscribe'), [{ op: 'unsubscribe', tasks: [task] }]);
    assert.deepEqual(socket.tasks, []);
  } finally {
    socket.close();
  }
});

test('PollcastSocket resumes every task across a drained and a killed gateway', async () => {
  const gateway = new GatewayProcess();
  const { RecordedWebSocket, opened, sent } = recordingWebSocket();
  const statuses = [];
  let socket = null;
  try {
    await gateway.start();
    const tasks = [
      await createSimTask('videoproc', stepped(14, 0.45, 0.3)),
      await createSimTask('genpic', [
        { at: 0, state: 'queued' },
        { at: 2.5, state: 'running' },
        { at: 6.5, state: 'succeeded' },
      ]),
    ];
    socket = new PollcastSocket(gateway.url, {
      WebSocket: RecordedWebSocket,
      backoff: QUICK_BACKOFF,
      onStatus: (status) => statuses.push(status),
    });
    const got = Object.fromEntries(tasks.map((task) => [task, recorder()]));
    for (const task of tasks) socket.watch(task, got[task].handlers);
    const video = got[tasks[0]];

    await until(() => video.events.length >= 3, 15000, 'the first events');
    const afterDrain = await withTasksHeld(tasks, async () => {
      await gateway.stop('SIGTERM'); // drain: a notice, then the server closes the socket
      await gateway.start();
      return video.events.length;
    });
    await until(() => video.events.length >= afterDrain + 2, 15000, 'events after the drain');
    await withTasksHeld(tasks, async () => {
      assert.equal(video.done.length, 0, 'the task is still running at the second restart');
      await gateway.stop('SIGKILL');
      await gateway.start();
    });
    await until(() => tasks.every((t) => got[t].done.length > 0), 25000, 'every terminal event');

    for (const task of tasks) {
      assertExactlyHistory(task, got[task], await history(gateway.url, task));
    }
    const notices = tasks.flatMap((t) => got[t].events.filter((e) => e.event === 'notice'));
    assert.ok(notices.some((n) => n.code === 'server_draining'), 'the drain notice was delivered');
    assert.ok(opened.length >= 3, `reconnected (${opened.length} connections)`);
    assert.ok(statuses.filter((s) => s === 'reconnecting').length >= 2, statuses.join(' '));
    // After a reconnect, each unfinished task is asked for with its last seq.
    const resumed = sent.filter((m) => m.op === 'subscribe' && m.since?.[tasks[0]] > 0);
    assert.ok(resumed.length >= 2, `resubscribed with since: ${JSON.stringify(resumed)}`);
  } catch (error) {
    error.message += `\n--- gateway log ---\n${gateway.log()}`;
    throw error;
  } finally {
    socket?.close();
    await gateway.dispose();
  }
});
