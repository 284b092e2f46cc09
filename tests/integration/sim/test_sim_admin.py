"""The ``/_sim`` admin API over real HTTP: tasks, statistics, reset."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.sim import SIM_CREDENTIALS
from gateway.sim.protocols.aholo import aholo_sign
from gateway.sim.protocols.genpic import genpic_signature
from tests.integration.sim_server import running_sim

pytestmark = pytest.mark.integration

CREDS = SIM_CREDENTIALS


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with running_sim() as url:
        yield url


@pytest.mark.parametrize(
    ("provider", "pattern"),
    [
        ("tryon", r"[0-9]+"),
        ("aholo", r"[A-Z0-9]{12}"),
        ("genpic", r"[A-Z0-9]{12}"),
        ("ailab", r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"),
        ("videoproc", r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"),
    ],
)
def test_generated_ids_follow_each_upstreams_style(
    client: httpx.Client, provider: str, pattern: str
) -> None:
    response = client.post("/_sim/tasks", json={"provider": provider})
    assert response.status_code == 201
    assert re.fullmatch(pattern, response.json()["task_id"])


def test_an_existing_id_is_a_409(client: httpx.Client) -> None:
    body = {"provider": "ailab", "task_id": "dup"}
    assert client.post("/_sim/tasks", json=body).status_code == 201
    response = client.post("/_sim/tasks", json=body)
    assert response.status_code == 409
    assert "ailab:dup" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"provider": "mars"}, 400, "unknown provider"),
        ({"provider": "tryon", "task_id": "abc"}, 422, "integers"),
        (
            {"provider": "ailab", "timeline": [{"at": 3, "state": "queued"}, {"at": 1}]},
            400,
            "state",
        ),
        (
            {
                "provider": "ailab",
                "timeline": [{"at": 3, "state": "queued"}, {"at": 1, "state": "running"}],
            },
            400,
            "time order",
        ),
        ({"provider": "ailab", "timeline": [{"at": 0, "state": "done"}]}, 400, "state"),
        ({"provider": "ailab", "colour": "red"}, 400, "colour"),
    ],
)
def test_bad_task_bodies_say_what_is_wrong(
    client: httpx.Client, body: dict[str, Any], status: int, fragment: str
) -> None:
    response = client.post("/_sim/tasks", json=body)
    assert response.status_code == status
    assert fragment in response.text


def test_a_held_task_keeps_its_step_until_released(client: httpx.Client) -> None:
    timeline = [{"at": 0, "state": "queued"}, {"at": 0.3, "state": "succeeded"}]
    client.post("/_sim/tasks", json={"provider": "videoproc", "task_id": "h", "timeline": timeline})
    held = client.post("/_sim/tasks/videoproc/h/hold")
    assert held.status_code == 200
    assert held.json()["held"] is True
    time.sleep(0.5)
    status = client.get("/videoproc/api/status/h").json()
    assert client.post("/_sim/tasks/videoproc/h/hold").json()["elapsed_s"] < 0.3
    released = client.post("/_sim/tasks/videoproc/h/release").json()
    assert released["held"] is False
    time.sleep(0.5)
    assert client.get("/videoproc/api/status/h").json() != status
    missing = client.post("/_sim/tasks/videoproc/nosuch/hold")
    assert missing.status_code == 404
    assert missing.json()["field"] == "task_id"
    assert "videoproc:nosuch" in missing.json()["detail"]


def test_stats_count_requests_and_each_id_of_a_batch(client: httpx.Client) -> None:
    for task_id in ("G1", "G2"):
        client.post("/_sim/tasks", json={"provider": "genpic", "task_id": task_id})
    params: dict[str, Any] = {
        "Action": "ListGenerateTaskDetail",
        "PublicKey": CREDS.genpic_public_key,
        "request_uuid": "r",
        "TaskUIDs": ["G1", "G2"],
    }
    params["Signature"] = genpic_signature(params, CREDS.genpic_private_key)
    client.post("/genpic", json=params)
    client.post("/genpic", json=params | {"TaskUIDs": ["G1"]})  # bad signature: still counted
    timestamp = str(int(time.time() * 1000))
    aholo_params = {
        "appuid": CREDS.aholo_appuid,
        "appkey": CREDS.aholo_app_key,
        "timestamp": timestamp,
        "sign": aholo_sign(
            CREDS.aholo_app_secret, CREDS.aholo_app_key, CREDS.aholo_appuid, timestamp
        ),
    }
    client.post("/aholo/v2/aholo/project/task/list/by-ids", params=aholo_params, json=["X"])
    client.get("/videoproc/api/status/unknown")
    stats = client.get("/_sim/stats").json()
    assert stats["requests"] == {"genpic": 2, "aholo": 1, "videoproc": 1}
    assert stats["tasks"] == {
        "genpic:G1": 2,
        "genpic:G2": 1,
        "aholo:X": 1,
        "videoproc:unknown": 1,
    }


def test_reset_forgets_tasks_stats_faults_and_refills_coins(client: httpx.Client) -> None:
    client.post("/_sim/tasks", json={"provider": "videoproc", "task_id": "v"})
    client.post("/_sim/faults", json={"provider": "ailab", "mode": "http500"})
    client.post("/_sim/balance", json={"tryon": 0.5})
    assert client.get("/videoproc/api/status/v").status_code == 200
    assert client.post("/_sim/reset").status_code == 200
    assert client.get("/videoproc/api/status/v").status_code == 404
    assert client.get("/_sim/faults").json() == {"faults": []}
    stats = client.get("/_sim/stats").json()
    assert stats["requests"] == {"videoproc": 1}  # only the request after the reset
    assert stats["balance"] == {"tryon": CREDS.tryon_balance}
    assert stats["coins_spent"] == {"tryon": 0.0}


def test_negative_balance_is_refused(client: httpx.Client) -> None:
    response = client.post("/_sim/balance", json={"tryon": -1})
    assert response.status_code == 400
    assert "balance" in response.json()["detail"]
