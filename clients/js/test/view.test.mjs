// TaskView, the rule both transports share for what counts as news (no server needed).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { TaskView, eventsUrl, parseTask, socketUrl } from '../pollcast.js';

const event = (kind, seq, state = 'running', extra = {}) => ({
  event: kind,
  task: 'videoproc:1',
  seq,
  state,
  terminal: ['succeeded', 'failed'].includes(state),
  ...extra,
});

test('TaskView keeps each seq once and in order', () => {
  const view = new TaskView('videoproc:1');
  const incoming = [
    event('snapshot', 2),
    event('progress', 3),
    event('progress', 3), // repeated
    event('progress', 2), // late
    event('notice', 3, 'running', { code: 'upstream_degraded' }),
    event('progress', 5),
    event('progress', 4), // out of order: already past it
    event('state', 6, 'succeeded'),
    event('notice', 6, 'succeeded', { code: 'server_draining' }), // after the end
    event('state', 7, 'failed'),
  ];
  const kept = incoming.filter((e) => view.absorb(e)).map((e) => `${e.event}:${e.seq}`);
  assert.deepEqual(kept, ['snapshot:2', 'progress:3', 'notice:3', 'progress:5', 'state:6']);
  assert.equal(view.seq, 6);
  assert.equal(view.state, 'succeeded');
  assert.equal(view.done, true);
});

test('TaskView resumes after a held seq and accepts a resync snapshot', () => {
  const view = new TaskView('videoproc:1', '4');
  assert.equal(view.absorb(event('snapshot', 4)), false, 'the snapshot it already holds');
  assert.equal(view.absorb(event('progress', 4)), false);
  assert.equal(view.absorb(event('progress', 5)), true);
  // The server lost its state (resync): its snapshot is the truth, even with a lower seq.
  assert.equal(view.absorb(event('snapshot', 1, 'queued')), true);
  assert.equal(view.seq, 1);
  assert.equal(view.absorb(event('state', 2)), true);
});

test('URLs carry the token and resume point; task keys split at the first colon', () => {
  assert.deepEqual(parseTask('aholo:a:b'), { provider: 'aholo', taskId: 'a:b', key: 'aholo:a:b' });
  assert.deepEqual(parseTask({ provider: 'ailab', task_id: '7' }).key, 'ailab:7');
  assert.throws(() => parseTask('no-colon'), TypeError);
  assert.throws(() => parseTask(':id'), TypeError);
  assert.equal(
    eventsUrl('http://gw:8000/', 'tryon:a/b', { token: 't k', lastEventId: 0 }),
    'http://gw:8000/v1/tasks/tryon/a%2Fb/events?token=t%20k&last_event_id=0',
  );
  assert.equal(eventsUrl('', 'ailab:1'), '/v1/tasks/ailab/1/events');
  assert.equal(socketUrl('https://gw.example/', { token: 'x' }), 'wss://gw.example/v1/ws?token=x');
  assert.equal(socketUrl('http://127.0.0.1:9'), 'ws://127.0.0.1:9/v1/ws');
});

test('etaSeconds counts the gateway estimate down from observed_at', async () => {
  const { etaSeconds } = await import('../pollcast.js');
  const observed = '2026-11-21T10:00:00.000Z';
  const at = (s) => Date.parse(observed) + s * 1000;
  const running = event('progress', 3, 'running', { eta_s: 30, observed_at: observed });
  assert.equal(etaSeconds(running, at(0)), 30);
  assert.equal(etaSeconds(running, at(12)), 18);
  assert.equal(etaSeconds(running, at(-60)), 30, 'a local clock behind the server adds nothing');
  assert.equal(etaSeconds(running, at(99)), 0);
  assert.equal(etaSeconds(event('progress', 4, 'running', { eta_s: null }), at(0)), null);
  assert.equal(etaSeconds(event('progress', 4, 'running'), at(0)), null, 'an older gateway');
  const done = event('state', 5, 'succeeded', { eta_s: 3, observed_at: observed });
  assert.equal(etaSeconds(done, at(0)), null);
  assert.equal(etaSeconds(null), null);
});
