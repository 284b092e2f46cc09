"""Injected faults as a real httpx client sees them."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from gateway.sim import SIM_CREDENTIALS
from tests.integration.sim_server import ManualClock

pytestmark = pytest.mark.integration

STATUS_PATH = "/videoproc/api/status"


def arm(client: httpx.Client, mode: str, provider: str = "videoproc", **extra: Any) -> None:
    response = client.post("/_sim/faults", json={"provider": provider, "mode": mode, **extra})
    assert response.status_code == 200, response.text
    assert [rule["mode"] for rule in response.json()["faults"]] == [mode]


def videoproc_task(client: httpx.Client) -> str:
    response = client.post("/_sim/tasks", json={"provider": "videoproc"})
    task_id: str = response.json()["task_id"]
    return task_id


def test_http500_is_an_html_error_page(client: httpx.Client) -> None:
    task_id = videoproc_task(client)
    arm(client, "http500")
    response = client.get(f"{STATUS_PATH}/{task_id}")
    assert response.status_code == 500
    assert response.headers["content-type"] == "text/html"
    assert b"500 Internal Server Error" in response.content


def test_rate_limit_is_429_with_retry_after(client: httpx.Client) -> None:
    task_id = videoproc_task(client)
    arm(client, "rate_limit", retry_after_s=7)
    response = client.get(f"{STATUS_PATH}/{task_id}")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"


def test_malformed_is_a_200_that_is_not_json(client: httpx.Client) -> None:
    task_id = videoproc_task(client)
    arm(client, "malformed")
    response = client.get(f"{STATUS_PATH}/{task_id}")
    assert response.status_code == 200
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(response.content)


def test_slow_answers_correctly_after_the_delay(client: httpx.Client) -> None:
    task_id = videoproc_task(client)
    arm(client, "slow", delay_s=0.3)
    started = time.monotonic()
    response = client.get(f"{STATUS_PATH}/{task_id}")
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200
    assert response.json()["task_id"] == task_id


def test_timeout_never_answers_and_blocks_no_one_else(client: httpx.Client) -> None:
    task_id = videoproc_task(client)
    arm(client, "timeout")
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"{STATUS_PATH}/{task_id}", timeout=0.3)
    # Other providers (and the admin API) answer at once meanwhile.
    headers = {"ailabapi-api-key": SIM_CREDENTIALS.ailab_api_key}
    started = time.monotonic()
    response = client.get(
        "/ailab/common/query-async-task-result", params={"task_id": "x"}, headers=headers
    )
    assert response.status_code == 400
    assert time.monotonic() - started < 0.3


async def test_a_held_request_does_not_delay_concurrent_ones(sim_url: str) -> None:
    async with httpx.AsyncClient(base_url=sim_url, timeout=5.0) as http:
        await http.post("/_sim/reset")
        await http.post("/_sim/faults", json={"provider": "ailab", "mode": "timeout"})
        outcome: dict[str, object] = {}

        async def held() -> None:
            try:
                await http.get("/ailab/common/query-async-task-result", timeout=0.5)
            except httpx.ReadTimeout as exc:
                outcome["held"] = exc

        async with anyio.create_task_group() as group:
            group.start_soon(held)
            await anyio.sleep(0.1)
            started = time.monotonic()
            response = await http.get(f"{STATUS_PATH}/nope")
            outcome["other_s"] = time.monotonic() - started
        assert response.status_code == 404
        assert isinstance(outcome["held"], httpx.ReadTimeout)
        assert isinstance(outcome["other_s"], float)
        assert outcome["other_s"] < 0.5


def test_reset_drops_the_connection_mid_response_quietly(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    task_id = videoproc_task(client)
    arm(client, "reset")
    with caplog.at_level(logging.DEBUG, logger="uvicorn.error"):
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(f"{STATUS_PATH}/{task_id}")
        # The next request (on a new connection) is dropped the same way.
        with pytest.raises(httpx.TransportError):
            client.get(f"{STATUS_PATH}/{task_id}")
        client.delete("/_sim/faults")
        assert client.get(f"{STATUS_PATH}/{task_id}").status_code == 200
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_faults_lapse_after_duration(client: httpx.Client, clock: ManualClock) -> None:
    task_id = videoproc_task(client)
    arm(client, "http500", duration_s=10)
    assert client.get(f"{STATUS_PATH}/{task_id}").status_code == 500
    clock.advance(10)
    assert client.get(f"{STATUS_PATH}/{task_id}").status_code == 200
    assert client.get("/_sim/faults").json() == {"faults": []}


def test_probability_zero_never_hits_and_mode_none_clears(client: httpx.Client) -> None:
    task_id = videoproc_task(client)
    arm(client, "http500", probability=0.0)
    assert all(client.get(f"{STATUS_PATH}/{task_id}").status_code == 200 for _ in range(20))
    client.post("/_sim/faults", json={"provider": "videoproc", "mode": "none"})
    assert client.get("/_sim/faults").json() == {"faults": []}


def test_faults_touch_only_their_provider_and_count_in_stats(client: httpx.Client) -> None:
    task_id = videoproc_task(client)
    arm(client, "http500", provider="aholo")
    assert client.get(f"{STATUS_PATH}/{task_id}").status_code == 200
    response = client.post("/aholo/v2/aholo/project/task/list/by-ids", json=["A", "B"])
    assert response.status_code == 500
    stats = client.get("/_sim/stats").json()
    assert stats["requests"] == {"videoproc": 1, "aholo": 1}
    assert stats["faults"] == {"aholo": 1}
    assert stats["tasks"] == {f"videoproc:{task_id}": 1, "aholo:A": 1, "aholo:B": 1}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"provider": "ailab", "mode": "explode"}, 400),
        ({"provider": "ailab", "mode": "slow", "probability": 2}, 400),
        ({"provider": "mars", "mode": "slow"}, 400),
    ],
)
def test_bad_fault_bodies_are_refused(
    client: httpx.Client, body: dict[str, Any], status: int
) -> None:
    response = client.post("/_sim/faults", json=body)
    assert response.status_code == status
    assert response.json()["detail"]
