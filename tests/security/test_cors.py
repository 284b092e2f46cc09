"""No page on another origin reads a user's streams through the subscriber cookie.

Browsers attach the ``pollcast_token`` cookie to cross-origin requests made
with credentials; what keeps a foreign page from *reading* the answer is the
CORS verdict: ``Access-Control-Allow-Origin`` naming that page (with
``Access-Control-Allow-Credentials: true``). ``server.cors_origins = ["*"]``
used to grant that to every origin; it is now refused at startup.
"""

from __future__ import annotations

import httpx
import pytest

from gateway.exceptions import ConfigError
from tests.integration.conftest import events_url
from tests.integration.gateway_server import running_gateway
from tests.security.conftest import RUNNING, create_sim_task, register, secured_doc

ALLOWED = ["https://app.example.com", "https://*.apps.example.com"]
FOREIGN = ["https://evil.example.net", "https://app.example.com.evil.net", "null"]


def readable_by(reply: httpx.Response, origin: str) -> bool:
    """Whether a browser lets a page on ``origin`` read this credentialed reply
    (Fetch standard, "CORS check": the origin named, credentials allowed)."""
    return (
        reply.headers.get_list("access-control-allow-origin") == [origin]
        and reply.headers.get("access-control-allow-credentials") == "true"
    )


def test_star_with_credentials_never_serves(sim: str) -> None:
    with (
        pytest.raises(ConfigError, match=r"^server\.cors_origins: "),
        running_gateway(secured_doc(sim, server={"cors_origins": ["*"]})),
    ):
        pass


async def test_a_cookie_request_from_a_foreign_origin_is_not_readable(
    sim: str, client: httpx.AsyncClient
) -> None:
    with running_gateway(secured_doc(sim, server={"cors_origins": ALLOWED})) as (base, _gw):
        task = await create_sim_task(client, sim, "videoproc", RUNNING)
        token = (await register(client, base, task))["token"]
        cookie = f"pollcast_token={token}"
        snapshot_url = f"{base}/v1/tasks/{task.replace(':', '/')}"

        for origin in FOREIGN:
            reply = await client.get(snapshot_url, headers={"Cookie": cookie, "Origin": origin})
            assert not readable_by(reply, origin), (origin, reply.headers)
            async with client.stream(
                "GET", events_url(base, task), headers={"Cookie": cookie, "Origin": origin}
            ) as stream:
                assert not readable_by(stream, origin), (origin, stream.headers)
            preflight = await client.options(
                snapshot_url,
                headers={"Origin": origin, "Access-Control-Request-Method": "GET"},
            )
            assert preflight.status_code == 400 and not readable_by(preflight, origin)

        for origin in ("https://app.example.com", "https://team.apps.example.com"):
            reply = await client.get(snapshot_url, headers={"Cookie": cookie, "Origin": origin})
            assert reply.status_code == 200 and readable_by(reply, origin), reply.headers
