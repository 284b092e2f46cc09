"""One upstream request over HTTP: the only place pollcast's I/O meets an adapter's request."""

from __future__ import annotations

import httpx

from gateway.core.model import Fault, FaultKind
from gateway.providers.base import UpstreamRequest, UpstreamResponse

__all__ = ["send"]


async def send(
    http: httpx.AsyncClient, request: UpstreamRequest, *, name: str, timeout_s: float
) -> UpstreamResponse | Fault:
    """Send ``request``; a transport failure comes back as a :class:`Fault`.

    The fault names the failure but never echoes httpx's message: it can hold
    the URL, and some upstreams sign requests in the query string.
    """
    try:
        reply = await http.request(
            request.method,
            request.url,
            params=request.params,
            headers=request.headers,
            content=request.body,
            timeout=timeout_s,
        )
    except httpx.TimeoutException:
        return Fault(FaultKind.TIMEOUT, f"{name} did not answer within {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return Fault(FaultKind.NETWORK, f"{name}: connection failed ({type(exc).__name__})")
    return UpstreamResponse(
        status_code=reply.status_code,
        headers={k.lower(): v for k, v in reply.headers.items()},
        body=reply.content,
    )
