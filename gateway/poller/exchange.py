"""One upstream request over HTTP: the only place pollcast's I/O meets an adapter's request."""

from __future__ import annotations

from gateway.core.model import Fault, FaultKind
from gateway.exceptions import UpstreamError, UpstreamTimeout
from gateway.poller.upstream import UpstreamClient
from gateway.providers.base import UpstreamRequest, UpstreamResponse

__all__ = ["send"]


async def send(
    http: UpstreamClient, request: UpstreamRequest, *, name: str, timeout_s: float
) -> UpstreamResponse | Fault:
    """Send ``request``; a network failure comes back as a :class:`Fault`.

    The fault names the failure but never the URL: some upstreams sign
    requests in the query string.
    """
    try:
        return await http.request(
            request.method,
            request.url,
            params=request.params,
            headers=request.headers,
            body=request.body,
            timeout_s=timeout_s,
        )
    except UpstreamTimeout:
        return Fault(FaultKind.TIMEOUT, f"{name} did not answer within {timeout_s:g} s")
    except UpstreamError as exc:
        return Fault(FaultKind.NETWORK, f"{name}: {exc}")
