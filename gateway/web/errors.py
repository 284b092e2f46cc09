"""Every error as ``application/problem+json`` (RFC 9457)."""

from __future__ import annotations

import logging
import math
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import ClientException, HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from gateway.exceptions import BackendError, InputError, LimitExceeded, Unauthorized
from gateway.redaction import Redactor

__all__ = [
    "BACKEND_RETRY_S",
    "EXCEPTION_HANDLERS",
    "GatewayRequest",
    "backend_unavailable",
    "problem",
]

log = logging.getLogger("pollcast.web")

PROBLEM_JSON = "application/problem+json"
# A client told the state backend is unavailable tries again this much later.
BACKEND_RETRY_S = 2


def problem(
    status: int,
    detail: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if code:
        body["code"] = code
    body.update({k: v for k, v in extra.items() if v is not None})
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _redactor(request: Request[Any, Any, Any]) -> Redactor:
    """The gateway's credentials redactor: a detail may quote what a client sent."""
    redactor = getattr(request.app.state.get("gateway"), "redactor", None)
    return redactor if isinstance(redactor, Redactor) else Redactor()


def _input_error(request: Request[Any, Any, Any], exc: InputError) -> Response[dict[str, Any]]:
    headers = None
    if isinstance(exc, LimitExceeded) and exc.retry_after_s is not None:
        # Whole seconds, rounded up: retrying at the stated time must succeed.
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    elif isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": exc.challenge}
    detail = _redactor(request).text(exc.message)
    return problem(exc.status, detail, code=exc.code, field=exc.field, headers=headers)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    detail = exc.detail or HTTPStatus(exc.status_code).phrase
    errors = None
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        errors = [
            {"key": e.get("key"), "message": e.get("message"), "source": e.get("source")}
            for e in exc.extra
            if isinstance(e, dict)
        ]
        if errors:
            detail = "; ".join(f"{e['key']}: {e['message']}" for e in errors)
    redactor = _redactor(request)
    return problem(
        exc.status_code,
        redactor.text(detail),
        errors=redactor.value(errors),
        headers=exc.headers,
    )


class GatewayRequest(Request[Any, Any, Any]):
    """Litestar's request, with JSON bodies nested too deeply refused as a client error.

    msgspec recurses while decoding into ``Any``; a 64 KiB body of ``[[[[…``
    exhausts the stack, and a RecursionError would otherwise be a 500.
    """

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise ClientException("the JSON body is nested too deeply") from None


def backend_unavailable() -> Response[dict[str, Any]]:
    """503: the state backend did not answer; the request may be retried as it is."""
    return problem(
        503,
        "the state backend is unavailable; try again shortly",
        code="backend_unavailable",
        headers={"Retry-After": str(BACKEND_RETRY_S)},
    )


def _backend_error(request: Request[Any, Any, Any], exc: BackendError) -> Response[dict[str, Any]]:
    # The message names only the failed operation and the error class: no URL, no credential.
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return backend_unavailable()


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "internal error; the gateway logged it")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    InputError: _input_error,
    BackendError: _backend_error,
    HTTPException: _http_error,
    Exception: _internal_error,
}
