"""The simulator's Litestar app: five upstream status endpoints plus the ``/_sim`` admin API.

The status endpoints are raw ASGI handlers: they must be cheap (thousands of
requests per second on one core) and some injected faults need the raw
``send`` (a response that promises a body and then drops the connection).
Each handler only translates: it reads the request into a
:class:`~gateway.sim.protocols.Call`, lets the fault board and the protocol
decide, and writes the :class:`~gateway.sim.protocols.Reply`.
"""

from __future__ import annotations

import contextvars
import logging
import mimetypes
import struct
import zlib
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

import anyio
import msgspec
from litestar import Litestar, MediaType, Request, Response, delete, get, post
from litestar.handlers import asgi
from litestar.handlers.asgi_handlers import ASGIRouteHandler
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.types import HTTPScope, Receive, Send

from gateway.exceptions import InputError
from gateway.sim.credentials import SimConfig
from gateway.sim.faults import FaultMode, FaultSpec
from gateway.sim.protocols import PROTOCOLS, Call, Protocol, Reply
from gateway.sim.simulator import Simulator
from gateway.sim.timeline import SimTask, TaskSpec

__all__ = ["create_sim_app"]

MAX_BODY_BYTES: Final = 1 << 20

_HTTP500_PAGE: Final = (
    b"<html>\r\n<head><title>500 Internal Server Error</title></head>\r\n"
    b"<body>\r\n<center><h1>500 Internal Server Error</h1></center>\r\n</body>\r\n</html>\r\n"
)
_GATEWAY_TIMEOUT_PAGE: Final = b"<html><body><h1>504 Gateway Time-out</h1></body></html>\r\n"
_RATE_LIMITED_BODY: Final = b'{"message": "Too Many Requests"}'
# A reply cut short mid-value: valid UTF-8, invalid JSON.
_MALFORMED_BODY: Final = b'{"code": 200, "msg": "ok", "data": {"state": 1, "posit'
# What a "reset" response promises before the connection drops.
_RESET_PROMISED_BYTES: Final = 4096
_RESET_SENT_BODY: Final = b'{"request_id": "'


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    # PNG chunk: length, type, data, CRC-32 of type + data (RFC 2083 §3.2).
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# A 1x1 transparent RGBA PNG: what every result "file" of an image type contains.
_PNG_PIXEL: Final = (
    b"\x89PNG\r\n\x1a\n"
    + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0))
    + _png_chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00\x00"))
    + _png_chunk(b"IEND", b"")
)

# --- dropping a connection without noise -------------------------------------

_dropping_connection: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sim_dropping_connection", default=False
)


class _IntentionalDropFilter(logging.Filter):
    """Silence uvicorn's complaint about the responses we cut short on purpose.

    uvicorn closes the connection when an ASGI app returns before finishing
    its response, and logs an error. The ``reset`` fault relies on exactly
    that, so the record is dropped -- but only when it comes from the task
    that marked the drop as intentional, never for anyone else's bug.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not _dropping_connection.get()


def _install_drop_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _IntentionalDropFilter) for f in logger.filters):
        logger.addFilter(_IntentionalDropFilter())


# --- raw ASGI plumbing -----------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    extra_headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _call_of(scope: HTTPScope, body: bytes, path_params: Mapping[str, str]) -> Call:
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    query: dict[str, str] = {}
    query_string = scope.get("query_string", b"")
    if query_string:
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            query.setdefault(name, value)
    host = headers.get("host")
    if not host:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return Call(
        method=scope["method"],
        path_params=path_params,
        query=query,
        headers=headers,
        body=body,
        base_url=f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}",
    )


async def _hold_until_disconnect(receive: Receive, hold_s: float) -> bool:
    """Wait for the client to hang up; ``True`` if it did within ``hold_s``."""
    with anyio.move_on_after(hold_s):
        while (await receive())["type"] != "http.disconnect":
            pass
        return True
    return False


async def _answer_with_fault(
    fault: FaultSpec, sim: Simulator, receive: Receive, send: Send
) -> None:
    mode = fault.mode
    if mode is FaultMode.HTTP500:
        await _send(send, 500, _HTTP500_PAGE, "text/html")
    elif mode is FaultMode.RATE_LIMIT:
        retry_after = (b"retry-after", fault.retry_after_header.encode())
        await _send(send, 429, _RATE_LIMITED_BODY, extra_headers=(retry_after,))
    elif mode is FaultMode.MALFORMED:
        await _send(send, 200, _MALFORMED_BODY)
    elif mode is FaultMode.TIMEOUT:
        if not await _hold_until_disconnect(receive, sim.config.timeout_hold_s):
            await _send(send, 504, _GATEWAY_TIMEOUT_PAGE, "text/html")
    elif mode is FaultMode.RESET:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(_RESET_PROMISED_BYTES).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": _RESET_SENT_BODY, "more_body": True})
        # Returning now, with the body unfinished, makes uvicorn close the
        # transport: the client sees a connection dropped mid-response.
        _dropping_connection.set(True)
    else:  # pragma: no cover - SLOW and NONE never reach here
        raise AssertionError(f"unexpected fault mode {mode}")


class StatusRoute(msgspec.Struct, frozen=True):
    """Where a protocol is served.

    ``tail_param`` names a trailing path segment (videoproc's ``{task_id}``):
    the route is then a mount and the rest of the path is that parameter
    (Litestar's ASGI handlers cannot take ``{name}`` path parameters).
    """

    path: str
    methods: frozenset[str]
    tail_param: str | None = None


def _status_endpoint(route: StatusRoute, protocol: Protocol, sim: Simulator) -> ASGIRouteHandler:
    """The ASGI handler serving ``protocol`` at ``route``."""
    provider = protocol.provider
    methods = route.methods
    tail_param = route.tail_param
    allow = (b"allow", ", ".join(sorted(methods)).encode())

    async def handle_status_request(scope: HTTPScope, receive: Receive, send: Send) -> None:
        if scope["method"] not in methods:
            body = b'{"detail": "Method Not Allowed"}'
            await _send(send, 405, body, extra_headers=(allow,))
            return
        try:
            body = await _read_body(receive)
        except _ClientGone:
            return
        except _BodyTooLarge:
            await _send(send, 413, b'{"detail": "Request body too large"}')
            return
        path_params = {} if tail_param is None else {tail_param: scope["path"].strip("/")}
        call = _call_of(scope, body, path_params)
        sim.record_request(provider)
        fault = sim.pick_fault(provider)
        if fault is not None:
            sim.record_fault(provider)
            if fault.mode is FaultMode.SLOW:
                await anyio.sleep(fault.delay_s)
            else:
                sim.record_task_queries(provider, protocol.task_ids(call))
                await _answer_with_fault(fault, sim, receive, send)
                return
        reply: Reply = protocol.respond(call, sim)
        sim.record_task_queries(provider, reply.task_ids)
        await _send(send, reply.status, reply.body, reply.content_type)

    return asgi(
        route.path,
        copy_scope=False,
        is_mount=tail_param is not None,
        name=f"sim-{provider}-status",
    )(handle_status_request)


# --- result files ------------------------------------------------------------------


@get(
    [
        "/ailab/files/{path:path}",
        "/aholo/files/{path:path}",
        "/genpic/files/{path:path}",
        "/tryon/oss/{path:path}",
        "/videoproc/api/download/{path:path}",
        "/api/download/{path:path}",
    ],
    name="sim-result-file",
    sync_to_thread=False,
)
def result_file(path: FromPath[str]) -> Response[bytes]:
    """A tiny stand-in for any result file, so resolved result URLs can be fetched."""
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    content = (
        _PNG_PIXEL
        if media_type == "image/png"
        else b"pollcast simulated file: " + (path.lstrip("/").encode())
    )
    return Response(content, media_type=media_type)


# --- admin API -------------------------------------------------------------------


class CreatedTask(msgspec.Struct, frozen=True):
    provider: str
    task_id: str


class HeldTask(msgspec.Struct, frozen=True):
    provider: str
    task_id: str
    held: bool
    elapsed_s: float


def _held(task: SimTask, now_mono: float) -> HeldTask:
    return HeldTask(
        task.provider, task.task_id, task.held_since is not None, task.elapsed(now_mono)
    )


class BalanceUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tryon: float


def _input_error_response(_: Request[Any, Any, Any], exc: InputError) -> Response[Any]:
    content: dict[str, Any] = {"status_code": exc.status, "detail": exc.message}
    if exc.field is not None:
        content["field"] = exc.field
    return Response(content, status_code=exc.status, media_type=MediaType.JSON)


def _admin_handlers(sim: Simulator) -> list[Any]:
    @post("/_sim/tasks", status_code=201, sync_to_thread=False)
    def create_task(data: JSONBody[TaskSpec]) -> CreatedTask:
        """Register a task; 400/422 for a bad body, 409 if the id exists."""
        task = sim.create_task(data)
        return CreatedTask(task.provider, task.task_id)

    @post("/_sim/tasks/{provider:str}/{task_id:str}/hold", status_code=200, sync_to_thread=False)
    def hold_task(provider: FromPath[str], task_id: FromPath[str]) -> HeldTask:
        """Stop the task's timeline where it is (already held: unchanged); 404 if unknown."""
        return _held(sim.hold(provider, task_id), sim.clock())

    @post("/_sim/tasks/{provider:str}/{task_id:str}/release", status_code=200, sync_to_thread=False)
    def release_task(provider: FromPath[str], task_id: FromPath[str]) -> HeldTask:
        """Let a held timeline go on from where it stopped; 404 if unknown."""
        return _held(sim.release(provider, task_id), sim.clock())

    @get("/_sim/stats", sync_to_thread=False)
    def stats() -> dict[str, Any]:
        """Request counts per provider and per task, tryon coins spent and left."""
        return sim.stats()

    @post("/_sim/faults", status_code=200, sync_to_thread=False)
    def arm_fault(data: JSONBody[FaultSpec]) -> dict[str, Any]:
        """Arm (or with ``mode: none`` clear) one provider's fault rule."""
        sim.arm_fault(data)
        return {"faults": sim.faults.active(sim.clock())}

    @get("/_sim/faults", sync_to_thread=False)
    def list_faults() -> dict[str, Any]:
        return {"faults": sim.faults.active(sim.clock())}

    @delete("/_sim/faults", status_code=200, sync_to_thread=False)
    def clear_faults(provider: FromQuery[str | None] = None) -> dict[str, Any]:
        """Clear every rule, or only ``?provider=``'s."""
        sim.faults.clear(provider)
        return {"faults": sim.faults.active(sim.clock())}

    @post("/_sim/balance", status_code=200, sync_to_thread=False)
    def set_balance(data: JSONBody[BalanceUpdate]) -> dict[str, Any]:
        """Set the tryon coin balance (e.g. to test running out)."""
        sim.set_tryon_balance(data.tryon)
        balance: dict[str, Any] = sim.stats()["balance"]
        return balance

    @post("/_sim/reset", status_code=200, sync_to_thread=False)
    def reset() -> dict[str, Any]:
        """Forget tasks, faults and statistics; refill the tryon balance."""
        sim.reset()
        return {"reset": True}

    return [
        create_task,
        hold_task,
        release_task,
        stats,
        arm_fault,
        list_faults,
        clear_faults,
        set_balance,
        reset,
    ]


# --- the app -----------------------------------------------------------------------

_STATUS_ROUTES: Final[Mapping[str, StatusRoute]] = {
    # per docs/providers/
    "ailab": StatusRoute("/ailab/common/query-async-task-result", frozenset({"GET", "POST"})),
    "aholo": StatusRoute("/aholo/v2/aholo/project/task/list/by-ids", frozenset({"POST"})),
    "tryon": StatusRoute("/tryon/api/inf/get_result", frozenset({"POST"})),
    "genpic": StatusRoute("/genpic", frozenset({"POST"})),
    "videoproc": StatusRoute("/videoproc/api/status", frozenset({"GET"}), tail_param="task_id"),
}


def create_sim_app(
    config: SimConfig | None = None, *, simulator: Simulator | None = None
) -> Litestar:
    """Build the simulator app.

    Args:
        config: credentials and knobs (defaults: :data:`~gateway.sim.credentials.SIM_CREDENTIALS`).
        simulator: an explicit state object (e.g. with injected clocks); its
            config wins over ``config``.

    The :class:`~gateway.sim.simulator.Simulator` is reachable as
    ``app.state.simulator``.
    """
    sim = simulator or Simulator(config)
    _install_drop_filter()
    status_handlers = [
        _status_endpoint(route, PROTOCOLS[provider](), sim)
        for provider, route in _STATUS_ROUTES.items()
    ]
    app = Litestar(
        route_handlers=[*status_handlers, result_file, *_admin_handlers(sim)],
        exception_handlers={InputError: _input_error_response},
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
    app.state.simulator = sim
    return app
