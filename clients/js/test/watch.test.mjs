// watchTask over a live gateway: order, de-duplication, closing, resume across restarts.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';

import { EventSource } from 'eventsource';

import { watchTask } from '../pollcast.js';
import {
  FlakyProxy,
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

/** watchTask with every callback recorded and every EventSource it opens kept. */
function watchRecorded(baseUrl, task, options = {}) {
  const opened = [];
  class RecordedEventSource extends EventSource {
    constructor(url, init) {
      super(url, init);
      opened.push(this);
    }
  }
  const got = { events: [], states: [], done: [], errors: [], opened };
  got.handle = watchTask(baseUrl, task, {
    EventSource: RecordedEventSource,
    onEvent: (event) => got.events.push(event),
    onState: (state, event, previous) => got.states.push([previous, state, event.seq]),
    onDone: (event) => got.done.push(event),
    onError: (error) => got.errors.push(error),
    ...options,
  });
  return got;
}

/**
 * The delivered events are the server's history after the first snapshot:
 * every seq once, in order, none missing, same content.
 */
function assertExactlyHistory(got, stored) {
  const [first, ...rest] = got.events.filter((e) => e.event !== 'notice');
  assert.equal(first.event, 'snapshot');
  const seqs = rest.map((e) => e.seq);
  const terminal = stored.at(-1).seq;
  const expected = Array.from({ length: terminal - first.seq }, (_, i) => first.seq + 1 + i);
  assert.deepEqual(seqs, expected, 'every seq after the snapshot exactly once, in order');
  assert.deepEqual(
    transitions(rest),
    transitions(stored.filter((e) => e.seq > first.seq)),
    'the same events the server stored',
  );
  assert.equal(got.done.length, 1, 'onDone exactly once');
  assert.deepEqual(got.done[0], got.events.at(-1), 'onDone gets the terminal event, delivered last');
  assert.equal(got.done[0].terminal, true);
}

test('watchTask delivers a task once, in order, and closes after the terminal event', async () => {
  const task = await createSimTask('videoproc', stepped(4, 0.3), { held: true });
  const got = watchRecorded(GATEWAY_URL, task);
  const polled = (e) => e.event !== 'notice' && e.state !== 'unknown';
  await until(() => got.events.some(polled), 10000, 'the first polled state');
  await releaseSimTasks([task]); // the timeline starts once watched
  await until(() => got.done.length > 0, 15000, 'the terminal event');
  assert.equal(got.handle.closed, true);
  assert.equal(got.opened.length, 1);
  assert.equal(got.opened[0].readyState, 2, 'EventSource closed, so it will not reconnect');
  const count = got.events.length;
  await sleep(600); // longer than the server's retry: a reconnect would show up here
  assert.equal(got.events.length, count, 'nothing after the terminal event');
  assert.equal(got.opened.length, 1, 'no new connection after the terminal event');

  assertExactlyHistory(got, await history(GATEWAY_URL, task));
  assert.equal(got.handle.state, 'succeeded');
  assert.equal(got.handle.lastSeq, got.done[0].seq);
  // onState fired for each change of state, never for progress within a state.
  const changes = got.states.map(([previous, state]) => [previous, state]);
  const delivered = got.events.map((e) => e.state);
  const expected = delivered
    .map((state, i) => [i ? delivered[i - 1] : null, state])
    .filter(([previous, state]) => previous !== state);
  assert.deepEqual(changes, expected);
  assert.deepEqual(changes.at(-1), ['running', 'succeeded']);
  assert.ok(got.events.filter((e) => e.event === 'progress').length >= 2, 'progress events seen');
  assert.deepEqual(got.errors, []);
});

test('watchTask drops events a connection delivers twice', async () => {
  const task = await createSimTask('videoproc', stepped(3, 0.25));
  // A transport that hands every message to the client twice (a misbehaving proxy).
  class Stuttering extends EventSource {
    addEventListener(type, listener, options) {
      super.addEventListener(type, (message) => (listener(message), listener(message)), options);
    }
  }
  const got = watchRecorded(GATEWAY_URL, task, { EventSource: Stuttering });
  await until(() => got.done.length > 0, 15000, 'the terminal event');
  assertExactlyHistory(got, await history(GATEWAY_URL, task));
});

test('watchTask rides out 503s from a proxy and resumes where it left off', async () => {
  const proxy = await new FlakyProxy(GATEWAY_URL).start();
  try {
    const task = await createSimTask('videoproc', stepped(8, 0.3));
    const got = watchRecorded(proxy.url, task, { backoff: { initialMs: 100, maxMs: 300 } });
    await until(() => got.events.length >= 3, 15000, 'the first events');
    proxy.failing = true;
    proxy.cutConnections();
    // EventSource gives up on a 503; watchTask must keep trying by itself.
    await until(() => proxy.refused >= 4, 10000, 'retries against the 503s');
    proxy.failing = false;
    await until(() => got.done.length > 0, 15000, 'the terminal event');

    assertExactlyHistory(got, await history(GATEWAY_URL, task));
    assert.ok(got.errors.some((e) => e.status === 503 && !e.fatal), 'the 503 was reported');
    assert.ok(got.opened.length >= 2, 'a new EventSource after the first one gave up');
  } finally {
    await proxy.close();
  }
});

test('watchTask resumed at the terminal seq (204) reports done with the snapshot', async () => {
  const task = await createSimTask('ailab', [
    { at: 0, state: 'running' },
    { at: 0.3, state: 'succeeded' },
  ]);
  const first = watchRecorded(GATEWAY_URL, task);
  await until(() => first.done.length > 0, 15000, 'the terminal event');
  const terminal = first.done[0];

  const again = watchRecorded(GATEWAY_URL, task, { lastEventId: terminal.seq });
  await until(() => again.done.length > 0, 15000, 'onDone after 204');
  assert.deepEqual(again.events, [], 'no event is delivered twice');
  assert.equal(again.done[0].seq, terminal.seq);
  assert.equal(again.done[0].state, 'succeeded');
  assert.deepEqual(again.done[0].result, terminal.result);
  assert.equal(again.handle.closed, true);
  assert.equal(again.opened.length, 1);
});

test('watchTask stops with a fatal error when the gateway refuses the task', async () => {
  const got = watchRecorded(GATEWAY_URL, 'nosuchprovider:42');
  await until(() => got.errors.some((e) => e.fatal), 15000, 'a fatal error');
  const fatal = got.errors.find((e) => e.fatal);
  assert.ok(fatal.status >= 400 && fatal.status < 500, `4xx, got ${fatal.status}`);
  assert.match(fatal.message, /nosuchprovider/);
  assert.equal(got.handle.closed, true);
  assert.deepEqual(got.done, []);
});

test('watchTask resumes across a drained and a killed gateway without loss or duplicates', async () => {
  const gateway = new GatewayProcess();
  try {
    await gateway.start();
    const task = await createSimTask('videoproc', stepped(14, 0.45, 0.3));
    const got = watchRecorded(gateway.url, task);
    const moved = (n) => got.events.filter((e) => e.event !== 'notice').length >= n;

    await until(() => moved(3), 15000, 'the first events');
    const afterDrain = await withTasksHeld([task], async () => {
      await gateway.stop('SIGTERM'); // drain: the stream ends with a notice
      await gateway.start();
      return got.events.length;
    });
    await until(() => got.events.length >= afterDrain + 2, 15000, 'events after the drain');
    await withTasksHeld([task], async () => {
      assert.equal(got.done.length, 0, 'the task is still running at the second restart');
      await gateway.stop('SIGKILL'); // no notice, no goodbye
      await gateway.start();
    });
    await until(() => got.done.length > 0, 25000, 'the terminal event');

    const notices = got.events.filter((e) => e.event === 'notice');
    assert.ok(notices.some((n) => n.code === 'server_draining'), 'the drain notice was delivered');
    assert.ok(got.errors.some((e) => e.code === 'reconnecting' && !e.fatal), 'reconnects reported');
    assert.ok(got.errors.every((e) => !e.fatal), 'no fatal error');
    assertExactlyHistory(got, await history(gateway.url, task));
    assert.ok(got.opened.every((source) => source.readyState === 2));
  } catch (error) {
    error.message += `\n--- gateway log ---\n${gateway.log()}`;
    throw error;
  } finally {
    await gateway.dispose();
  }
});
