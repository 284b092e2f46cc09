"""HTTP routes. They translate between HTTP and :class:`Gateway`; no polling or state logic."""

from __future__ import annotations

from typing import Annotated, Any, cast

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.core.listing import decode_list_cursor, parse_count
from gateway.core.model import Event, TaskKey, format_timestamp
from gateway.core.model import State as TaskState
from gateway.core.sse import MAX_SEQ, decode_cursor, parse_last_event_id
from gateway.core.tracker import as_snapshot
from gateway.exceptions import InputError, NotWatched
from gateway.listing import TaskPage
from gateway.service import Gateway
from gateway.web.auth import (
    Authenticated,
    Principal,
    SubscriberPrincipal,
    authenticator_of,
    authorize_read,
    limit_key,
    may_poll,
    require_backend,
)
from gateway.web.errors import problem
from gateway.web.limits import limits_of
from gateway.web.streams import FeedResponse, FeedStream, Framing, mux_sse, ndjson, single_sse
from gateway.webhooks.model import WebhookTarget

__all__ = ["ROUTES"]

NDJSON = "application/x-ndjson"


def gateway_of(state: State) -> Gateway:
    return cast(Gateway, state.gateway)


class WatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    provider: str
    task_id: str
    deadline_s: Annotated[float, msgspec.Meta(gt=0, le=30 * 24 * 3600)] | None = None
    webhook: WebhookTarget | None = None  # POST the task's events there, signed


class Watching(msgspec.Struct):
    task: str
    snapshot: Event
    events_url: str
    ws_url: str
    token: str | None
    webhook: WebhookTarget | None = None


def _unavailable() -> Response[Any]:
    return problem(
        503,
        "this server is draining; connect to another node",
        code="server_draining",
        headers={"Retry-After": "1"},
    )


def _wants_ndjson(request: Request[Any, Any, Any]) -> bool:
    return NDJSON in request.headers.get("accept", "")


@get("/v1/tasks/{provider:str}/{task_id:str}/events")
async def task_events(
    request: Request[Any, Any, Any],
    state: State,
    provider: FromPath[str],
    task_id: FromPath[str],
    principal: Authenticated,
    last_event_id: FromQuery[str | None] = None,
) -> Response[Any]:
    """SSE (or NDJSON) stream of one task; resumes from ``Last-Event-ID``."""
    gw = gateway_of(state)
    key = gw.key(provider, task_id)
    since = parse_last_event_id(request.headers.get("last-event-id") or last_event_id)
    await authorize_read(gw, principal, [key])
    if gw.draining:
        return _unavailable()
    framing = ndjson() if _wants_ndjson(request) else single_sse(gw.config.server.retry_ms)
    return await _open_stream(gw, [key], [since], framing, principal)


@get("/v1/events")
async def many_events(
    request: Request[Any, Any, Any],
    state: State,
    tasks: FromQuery[str],
    principal: Authenticated,
    cursor: FromQuery[str | None] = None,
) -> Response[Any]:
    """One SSE stream for many tasks; ``id:`` is a cursor that resumes all of them."""
    gw = gateway_of(state)
    names = list(dict.fromkeys(t for t in tasks.split(",") if t))
    if not names:
        raise InputError("tasks must list at least one 'provider:task_id'", field="tasks")
    gw.check_task_count(len(names), "stream")
    keys = [gw.parse_key(name) for name in names]
    order = [str(k) for k in keys]
    raw = request.headers.get("last-event-id") or cursor
    since: list[int | None] = list(decode_cursor(raw, len(keys))) if raw else [None] * len(keys)
    await authorize_read(gw, principal, keys)
    if gw.draining:
        return _unavailable()
    if _wants_ndjson(request):
        framing = ndjson()
    else:
        framing = mux_sse(gw.config.server.retry_ms, order, [s or 0 for s in since])
    return await _open_stream(gw, keys, since, framing, principal)


async def _open_stream(
    gw: Gateway,
    keys: list[TaskKey],
    since: list[int | None],
    framing: Framing,
    principal: Principal,
) -> Response[Any]:
    feed = gw.open_feed(framing.stream_kind)
    if isinstance(principal, SubscriberPrincipal):
        feed.expire_at(principal.expires_at)
    initial = []
    try:
        for key, last in zip(keys, since, strict=True):
            initial.extend(await feed.add(key, last, may_poll=may_poll(principal)))
    except BaseException:
        feed.close()
        raise
    if feed.done and not initial:
        # Already has everything up to the terminal event: 204 tells
        # EventSource to stop reconnecting (WHATWG SSE, "204 No Content").
        feed.close()
        return Response(content=None, status_code=204)
    return FeedResponse(FeedStream(feed, initial, framing))


@get("/v1/tasks/{provider:str}/{task_id:str}")
async def task_snapshot(
    state: State, provider: FromPath[str], task_id: FromPath[str], principal: Authenticated
) -> TaskView:
    """The current snapshot and its open subscriptions; a task never seen is
    polled once (shared) first, unless the principal may not cause polling
    (a subscriber token)."""
    gw = gateway_of(state)
    key = gw.key(provider, task_id)
    await authorize_read(gw, principal, [key])
    snapshot = as_snapshot(await gw.snapshot(key, may_poll=may_poll(principal)))
    return task_view(snapshot, await gw.watchers(str(key)))


@post("/v1/tasks", status_code=201)
async def watch_task(
    request: Request[Any, Any, Any],
    state: State,
    data: JSONBody[WatchRequest],
    principal: Authenticated,
) -> Watching:
    """Follow a task until it ends, whether or not anyone subscribes.

    Takes an API key (in token mode); the answer carries a subscriber token
    for this task, to hand to a browser.
    """
    gw = gateway_of(state)
    require_backend(principal, "register tasks")
    limits = limits_of(state)
    await limits.register(limit_key(principal))
    key = gw.key(data.provider, data.task_id)
    if data.webhook is not None:
        await gw.check_webhook(data.webhook)
    await limits.admit_watch(
        limit_key(principal), str(key), here=gw.is_watched, anywhere=gw.watched_tasks
    )
    snapshot = await gw.watch(key, deadline_s=data.deadline_s, webhook=data.webhook)
    base = str(request.base_url).rstrip("/")
    path = f"/v1/tasks/{key.provider}/{key.task_id}/events"
    ws_base = "ws" + base[4:] if base.startswith("http") else base
    auth = authenticator_of(state)
    return Watching(
        task=str(key),
        snapshot=as_snapshot(snapshot),
        events_url=base + path,
        ws_url=ws_base + "/v1/ws",
        token=auth.mint([str(key)]).token if auth.mode == "token" else None,
        webhook=data.webhook,
    )


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    tasks: list[str]
    ttl_s: Annotated[float, msgspec.Meta(gt=0)] | None = None


class Grant(msgspec.Struct):
    token: str
    expires_at: str  # RFC 3339, like every timestamp on the wire
    tasks: list[str]


@post("/v1/tokens", status_code=201)
async def mint_token(state: State, data: JSONBody[TokenRequest], principal: Authenticated) -> Grant:
    """A subscriber token for a browser: reads these tasks (and no others) for ``ttl_s``."""
    gw = gateway_of(state)
    auth = authenticator_of(state)
    require_backend(principal, "mint tokens")
    if auth.mode != "token":
        raise InputError(
            "this gateway runs in auth mode 'open': streams need no token", field="auth"
        )
    if not data.tasks:
        raise InputError("tasks must name at least one 'provider:task_id'", field="tasks")
    gw.check_task_count(len(data.tasks), "token")
    if data.ttl_s is not None and data.ttl_s > auth.config.max_token_ttl_s:
        raise InputError(
            f"ttl_s may be at most {auth.config.max_token_ttl_s:g} seconds", field="ttl_s"
        )
    minted = auth.mint([str(gw.parse_key(t)) for t in data.tasks], data.ttl_s)
    return Grant(
        token=minted.token, expires_at=format_timestamp(minted.expires_at), tasks=minted.tasks
    )


class TaskView(Event, frozen=True, kw_only=True):
    """The snapshot body of ``GET /v1/tasks/{provider}/{task_id}``: the event
    object plus ``watchers``, the task's open subscriptions."""

    watchers: int


def task_view(snapshot: Event, watchers: int) -> TaskView:
    fields = {name: getattr(snapshot, name) for name in snapshot.__struct_fields__}
    return TaskView(**fields, watchers=watchers)


class HistoryReply(msgspec.Struct):
    task: str
    events: list[Event]
    gap: bool  # the history no longer reaches back to ``after``: the oldest kept follow
    next_after: int  # pass as ``after`` for the next page
    more: bool  # more kept events follow right now
    latest_seq: int


HISTORY_LIMIT_DEFAULT = 100
HISTORY_LIMIT_MAX = 1000


@get("/v1/tasks/{provider:str}/{task_id:str}/history")
async def task_history(
    state: State,
    provider: FromPath[str],
    task_id: FromPath[str],
    principal: Authenticated,
    after: FromQuery[str | None] = None,
    limit: FromQuery[str | None] = None,
) -> HistoryReply:
    """The task's kept events after seq ``after``, paged; read from the store only."""
    gw = gateway_of(state)
    key = gw.key(provider, task_id)
    since = parse_count(after, field="after", default=0, low=0, high=MAX_SEQ)
    count = parse_count(
        limit, field="limit", default=HISTORY_LIMIT_DEFAULT, low=1, high=HISTORY_LIMIT_MAX
    )
    await authorize_read(gw, principal, [key])
    page = await gw.history(key, since, count)
    return HistoryReply(
        task=str(key),
        events=[enc.event for enc in page.events],
        gap=page.gap,
        next_after=page.next_after,
        more=page.more,
        latest_seq=page.latest,
    )


LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 1000


@get("/v1/tasks")
async def followed_tasks(
    state: State,
    principal: Authenticated,
    provider: FromQuery[str | None] = None,
    task_state: Annotated[str | None, QueryParameter(name="state")] = None,
    cursor: FromQuery[str | None] = None,
    limit: FromQuery[str | None] = None,
) -> TaskPage:
    """The tasks the gateway (cluster) follows — watched, or with open
    subscriptions — in key order, paged by ``cursor``, with their watchers.

    Takes an API key (in token mode).
    """
    gw = gateway_of(state)
    require_backend(principal, "list tasks")
    count = parse_count(
        limit, field="limit", default=LIST_LIMIT_DEFAULT, low=1, high=LIST_LIMIT_MAX
    )
    wanted = _state_filter(task_state)
    provider = provider or None
    after = None
    if cursor:
        after = decode_list_cursor(cursor, provider=provider, state=task_state or None).after
    return await gw.list_tasks(provider=provider, state=wanted, after=after, limit=count)


def _state_filter(raw: str | None) -> TaskState | None:
    if not raw:
        return None
    try:
        return TaskState(raw)
    except ValueError:
        names = ", ".join(s.value for s in TaskState)
        raise InputError(f"state must be one of {names}", field="state") from None


@delete("/v1/tasks/{provider:str}/{task_id:str}", status_code=204)
async def unwatch_task(
    state: State, provider: FromPath[str], task_id: FromPath[str], principal: Authenticated
) -> None:
    gw = gateway_of(state)
    require_backend(principal, "unwatch tasks")
    key = gw.key(provider, task_id)
    await limits_of(state).release_watch(str(key))
    if not await gw.unwatch(key):
        raise NotWatched(f"{key} is not being watched", field="task")


@get("/v1/providers")
async def providers(state: State, principal: Authenticated) -> dict[str, Any]:
    return {"providers": gateway_of(state).describe_providers()}


@get("/healthz")
async def healthz(state: State) -> dict[str, str]:
    return {"status": "ok", "node": gateway_of(state).node_id}


@get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response[bytes]:
    """Prometheus text format; labels carry providers and states, never tasks or secrets."""
    gw = gateway_of(state)
    body = gw.redactor.text(gw.metrics.render().decode()).encode()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@get("/readyz")
async def readyz(state: State) -> Response[dict[str, Any]]:
    gw = gateway_of(state)
    reason = await gw.readiness()
    if reason is None:
        return Response({"status": "ready"})
    return Response({"status": "not ready", "reason": reason}, status_code=503)


ROUTES = [
    task_events,
    many_events,
    task_snapshot,
    task_history,
    watch_task,
    mint_token,
    followed_tasks,
    unwatch_task,
    providers,
    healthz,
    readyz,
    metrics,
]
