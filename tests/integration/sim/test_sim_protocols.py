"""The five simulated upstreams over real HTTP: happy paths, auth refusals, costs, 404s.

One live simulator per module with a manual clock, so timelines move only
when a test advances it; every test starts from ``POST /_sim/reset``.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import msgspec
import pytest

from gateway.sim import SIM_CREDENTIALS
from gateway.sim.protocols.aholo import aholo_sign
from gateway.sim.protocols.genpic import genpic_signature
from tests.integration.sim_server import ManualClock

pytestmark = pytest.mark.integration

CREDS = SIM_CREDENTIALS


def create(
    client: httpx.Client, provider: str, timeline: list[dict[str, Any]], **extra: Any
) -> str:
    response = client.post(
        "/_sim/tasks", json={"provider": provider, "timeline": timeline, **extra}
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["provider"] == provider
    task_id: str = created["task_id"]
    return task_id


STEPS = [
    {"at": 0, "state": "queued", "position": 3},
    {"at": 2, "state": "running", "progress": 40},
    {"at": 4, "state": "succeeded"},
]


# --- ailab ---------------------------------------------------------------------


def test_ailab_walks_its_timeline_by_get_and_post(client: httpx.Client, clock: ManualClock) -> None:
    task_id = create(client, "ailab", STEPS)
    headers = {"ailabapi-api-key": CREDS.ailab_api_key}
    path = "/ailab/common/query-async-task-result"
    seen = []
    for _ in range(3):
        by_get = client.get(path, params={"task_id": task_id}, headers=headers)
        by_post = client.post(path, json={"task_id": task_id}, headers=headers)
        assert by_get.status_code == by_post.status_code == 200
        assert by_get.json()["task_status"] == by_post.json()["task_status"]
        seen.append(by_get.json()["task_status"])
        clock.advance(2)
    assert seen == [0, 1, 2]
    result = by_get.json()["result"]
    assert result[0].startswith(str(client.base_url))
    assert client.get(result[0]).status_code == 200


def test_ailab_wrong_key_is_http_401_with_the_envelope(client: httpx.Client) -> None:
    task_id = create(client, "ailab", STEPS)
    response = client.get(
        "/ailab/common/query-async-task-result",
        params={"task_id": task_id},
        headers={"ailabapi-api-key": "not-the-key"},
    )
    assert response.status_code == 401
    body = response.json()
    assert body["error_code"] == 401
    assert body["error_detail"]["code"] == "ERROR_INVALID_API_KEY"


# --- aholo ---------------------------------------------------------------------


def aholo_params(timestamp_ms: int | None = None, **overrides: str) -> dict[str, str]:
    timestamp = str(timestamp_ms if timestamp_ms is not None else int(time.time() * 1000))
    return {
        "appuid": CREDS.aholo_appuid,
        "appkey": CREDS.aholo_app_key,
        "timestamp": timestamp,
        "sign": aholo_sign(
            CREDS.aholo_app_secret, CREDS.aholo_app_key, CREDS.aholo_appuid, timestamp
        ),
    } | overrides


AHOLO_PATH = "/aholo/v2/aholo/project/task/list/by-ids"


def test_aholo_batch_with_native_waiting_and_preprocessing(
    client: httpx.Client, clock: ManualClock
) -> None:
    first = create(
        client,
        "aholo",
        [
            {"at": 0, "state": "queued", "native": 1},
            {"at": 1, "state": "running", "native": 8},
            {"at": 2, "state": "running"},
            {"at": 3, "state": "succeeded"},
        ],
    )
    second = create(client, "aholo", [{"at": 0, "state": "failed"}])
    statuses = []
    for _ in range(4):
        response = client.post(AHOLO_PATH, params=aholo_params(), json=[first, second, "NOPE"])
        body = response.json()
        assert (response.status_code, body["c"], body["f"]) == (200, "0", "")
        by_id = {task["taskId"]: task for task in body["d"]}
        assert set(by_id) == {first, second}
        assert by_id[second]["status"] == 4
        statuses.append(by_id[first]["status"])
        clock.advance(1)
    assert statuses == [1, 8, 2, 3]
    ply = by_id[first]["result"]["plyPath"]
    assert client.get(ply).status_code == 200


def test_aholo_task_appears_after_visible_after_s(client: httpx.Client, clock: ManualClock) -> None:
    task_id = create(client, "aholo", STEPS, visible_after_s=1.5)
    listed = client.post(AHOLO_PATH, params=aholo_params(), json=[task_id]).json()
    assert listed == {"c": "0", "d": [], "m": None, "f": ""}
    clock.advance(1.5)
    listed = client.post(AHOLO_PATH, params=aholo_params(), json=[task_id]).json()
    assert [task["taskId"] for task in listed["d"]] == [task_id]


@pytest.mark.parametrize(
    "params",
    [
        aholo_params(sign="0" * 32),
        aholo_params(timestamp_ms=int(time.time() * 1000) - 10 * 60 * 1000),
        aholo_params(appkey="someone-else"),
    ],
    ids=["bad-sign", "stale-timestamp", "wrong-appkey"],
)
def test_aholo_refusals_are_c_401_in_an_http_200(
    client: httpx.Client, params: dict[str, str]
) -> None:
    task_id = create(client, "aholo", STEPS)
    response = client.post(AHOLO_PATH, params=params, json=[task_id])
    assert response.status_code == 200
    body = response.json()
    assert (body["c"], body["d"]) == ("401", None)


# --- tryon ---------------------------------------------------------------------

TRYON_PATH = "/tryon/api/inf/get_result"


def tryon_body(inf_id: str, **overrides: str) -> bytes:
    # Like the doc's client: ``data=json.dumps(params)``, no Content-Type.
    params = {"openId": CREDS.tryon_open_id, "apiKey": CREDS.tryon_api_key, "infId": int(inf_id)}
    return msgspec.json.encode(params | overrides)


def test_tryon_positions_results_and_charges(client: httpx.Client, clock: ManualClock) -> None:
    task_id = create(client, "tryon", STEPS)
    seen = []
    for _ in range(3):
        response = client.post(TRYON_PATH, content=tryon_body(task_id))
        envelope = response.json()
        assert (response.status_code, envelope["code"], envelope["msg"]) == (200, 200, "ok")
        data = envelope["data"]
        assert data["openId"] == CREDS.tryon_open_id
        seen.append((data["state"], data["position"]))
        clock.advance(2)
    assert seen == [(1, 3), (1, 0), (2, 0)]
    oss_base = f"{client.base_url}/tryon/oss/"
    assert client.get(oss_base + data["body_url"]).headers["content-type"] == "image/png"
    assert client.get(oss_base + data["showUrl"]).status_code == 200
    stats = client.get("/_sim/stats").json()
    assert stats["coins_spent"] == {"tryon": 0.3}
    assert stats["balance"] == {"tryon": CREDS.tryon_balance - 0.3}


def test_tryon_wrong_api_key_is_code_401_and_costs_nothing(client: httpx.Client) -> None:
    task_id = create(client, "tryon", STEPS)
    response = client.post(TRYON_PATH, content=tryon_body(task_id, apiKey="nope"))
    assert response.json() == {"code": 401, "msg": "invalid openId or apiKey"}
    assert client.get("/_sim/stats").json()["coins_spent"] == {"tryon": 0.0}


def test_tryon_runs_out_of_coins(client: httpx.Client) -> None:
    task_id = create(client, "tryon", STEPS)
    assert client.post("/_sim/balance", json={"tryon": 0.2}).json() == {"tryon": 0.2}
    states = [
        client.post(TRYON_PATH, content=tryon_body(task_id)).json()["data"]["state"]
        for _ in range(3)
    ]
    assert states == [1, 1, -2]
    stats = client.get("/_sim/stats").json()
    assert stats["balance"] == {"tryon": 0.0}
    assert stats["coins_spent"] == {"tryon": 0.2}


def test_tryon_unknown_task(client: httpx.Client) -> None:
    response = client.post(TRYON_PATH, content=tryon_body("999999"))
    assert response.json() == {"code": 404, "msg": "task not found"}


# --- genpic --------------------------------------------------------------------


def genpic_body(uids: list[str], **overrides: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "Action": "ListGenerateTaskDetail",
        "PublicKey": CREDS.genpic_public_key,
        "request_uuid": "e1b0f7a2-6c1d-4b7e-9a55-2f1c0c3d4e5f",
        "TaskUIDs": uids,
    }
    params["Signature"] = genpic_signature(params, CREDS.genpic_private_key)
    return params | overrides


def test_genpic_batch(client: httpx.Client, clock: ManualClock) -> None:
    first = create(client, "genpic", STEPS)
    second = create(client, "genpic", [{"at": 0, "state": "failed", "message": "NSFW"}])
    statuses = []
    for _ in range(3):
        body = client.post("/genpic", json=genpic_body([first, second, "GONE"])).json()
        assert (body["RetCode"], body["Action"]) == (0, "ListGenerateTaskDetailResponse")
        by_uid = {detail["TaskUid"]: detail for detail in body["TaskDetailList"]}
        assert set(by_uid) == {first, second}
        assert (by_uid[second]["TaskStatus"], by_uid[second]["TaskErrorMsg"]) == ("Error", "NSFW")
        statuses.append(by_uid[first]["TaskStatus"])
        clock.advance(2)
    assert statuses == ["Queuing", "Running", "Finished"]
    assert client.get(by_uid[first]["FinalPictureUrls"][0]).status_code == 200


def test_genpic_bad_signature_is_ret_code_171(client: httpx.Client) -> None:
    task_id = create(client, "genpic", STEPS)
    body = client.post("/genpic", json=genpic_body([task_id], Signature="f" * 40)).json()
    assert (body["RetCode"], body["Message"]) == (171, "Signature VerifyAC Error")


# --- videoproc -----------------------------------------------------------------


def test_videoproc_progress_and_downloads(client: httpx.Client, clock: ManualClock) -> None:
    task_id = create(client, "videoproc", STEPS)
    seen = []
    for _ in range(3):
        response = client.get(f"/videoproc/api/status/{task_id}")
        assert response.status_code == 200
        body = response.json()
        seen.append((body["status"], body["progress"]))
        clock.advance(2)
    assert seen == [("processing", 0), ("processing", 40), ("completed", 100)]
    for path in body["files"].values():
        assert path.startswith("/api/download/")
        assert client.get(f"/videoproc{path}").status_code == 200


def test_videoproc_unknown_task_is_404(client: httpx.Client) -> None:
    response = client.get("/videoproc/api/status/does-not-exist")
    assert response.status_code == 404
    assert response.json() == {"detail": "Task not found"}


def test_wrong_method_is_405(client: httpx.Client) -> None:
    response = client.get(TRYON_PATH)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
