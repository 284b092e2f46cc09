// Subscriber tokens: a backend registers a task with its API key and hands the
// browser the token from the answer; the client sends it as ?token=.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { EventSource } from 'eventsource';
import WebSocket from 'ws';

import { PollcastSocket, watchTask } from '../pollcast.js';
import { createSimTask, stepped, until } from './live.mjs';

const GUARDED_URL = process.env.POLLCAST_TOKEN_URL;
const API_KEY = process.env.POLLCAST_API_KEY;

/** What a backend does: POST /v1/tasks with its API key; the reply carries a token. */
async function register(task) {
  const [provider, ...rest] = task.split(':');
  const reply = await fetch(`${GUARDED_URL}/v1/tasks`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ provider, task_id: rest.join(':') }),
  });
  assert.equal(reply.status, 201, await reply.clone().text());
  const body = await reply.json();
  assert.ok(body.token, 'token mode hands out a subscriber token');
  return body.token;
}

test('watchTask sends the token; without it the watch stops with a 401', async () => {
  assert.ok(GUARDED_URL && API_KEY, 'POLLCAST_TOKEN_URL and POLLCAST_API_KEY are set');
  const task = await createSimTask('ailab', stepped(2, 0.2));
  const token = await register(task);

  const refused = [];
  const denied = watchTask(GUARDED_URL, task, { EventSource, onError: (e) => refused.push(e) });
  const events = [];
  const done = [];
  watchTask(GUARDED_URL, task, {
    EventSource,
    token,
    onEvent: (e) => events.push(e),
    onDone: (e) => done.push(e),
  });
  await until(() => done.length === 1 && refused.some((e) => e.fatal), 15000, 'both outcomes');
  assert.equal(done[0].state, 'succeeded');
  assert.equal(events[0].event, 'snapshot');
  const fatal = refused.find((e) => e.fatal);
  assert.equal(fatal.status, 401);
  assert.equal(denied.closed, true);
});

test('PollcastSocket asks its token function again after the server refuses it', async () => {
  assert.ok(GUARDED_URL && API_KEY, 'POLLCAST_TOKEN_URL and POLLCAST_API_KEY are set');
  const task = await createSimTask('genpic', stepped(2, 0.2));
  const token = await register(task);
  const handed = [];
  const tokens = ['not-a-token', token];
  const done = [];
  const socket = new PollcastSocket(GUARDED_URL, {
    WebSocket,
    backoff: { initialMs: 50, maxMs: 100 },
    // The first token is refused (close 4401): a token function gets another chance.
    token: () => {
      const next = tokens.shift() ?? token;
      handed.push(next);
      return next;
    },
    onDone: (e) => done.push(e),
  });
  try {
    socket.subscribe(task);
    await until(() => done.length === 1, 15000, 'the terminal event');
    assert.equal(done[0].state, 'succeeded');
    assert.deepEqual(handed.slice(0, 2), ['not-a-token', token]);
  } finally {
    socket.close();
  }

  const errors = [];
  const fixed = new PollcastSocket(GUARDED_URL, { WebSocket, token: 'not-a-token', onError: (e) => errors.push(e) });
  await until(() => fixed.status === 'closed', 10000, 'the refusal');
  assert.ok(errors.some((e) => e.fatal && e.code === 'refused'), JSON.stringify(errors));
});
