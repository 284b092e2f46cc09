"""Request verification and envelopes of the five protocols, without HTTP.

A :class:`Call` goes in, a :class:`Reply` comes out; the simulator's clocks
are injected so timestamps and timelines are fixed.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from gateway.core.model import State
from gateway.sim import SimConfig, Simulator
from gateway.sim.protocols.aholo import AholoProtocol, aholo_sign
from gateway.sim.protocols.ailab import AilabProtocol
from gateway.sim.protocols.base import Call
from gateway.sim.protocols.genpic import GenpicProtocol, genpic_signature
from gateway.sim.protocols.tryon import TryonProtocol
from gateway.sim.protocols.videoproc import VideoprocProtocol
from gateway.sim.timeline import Step, TaskSpec
from tests.integration.sim_server import ManualClock

BASE = "http://sim.test"
NOW_S = 1_700_000_000.0
NOW_MS = str(int(NOW_S * 1000))
CREDS = SimConfig()


def make_sim(**config: Any) -> tuple[Simulator, ManualClock]:
    clock = ManualClock()
    sim = Simulator(
        SimConfig(**config), clock=clock, wall_clock=lambda: NOW_S, rng=random.Random(3)
    )
    return sim, clock


def add_task(sim: Simulator, provider: str, task_id: str, *steps: Step, **spec: Any) -> None:
    sim.create_task(TaskSpec(provider=provider, task_id=task_id, timeline=steps or None, **spec))


def call(
    method: str = "POST",
    *,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: Any = b"",
    path_params: dict[str, str] | None = None,
) -> Call:
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    return Call(method, path_params or {}, query or {}, headers or {}, raw, BASE)


def decoded(reply_body: bytes) -> Any:
    return msgspec.json.decode(reply_body)


SUCCEEDED = Step(at=0, state=State.SUCCEEDED)


# --- ailab ---------------------------------------------------------------------

AILAB_KEY = {"ailabapi-api-key": CREDS.ailab_api_key}


def test_ailab_get_and_post_both_answer_with_the_envelope() -> None:
    sim, _ = make_sim()
    add_task(sim, "ailab", "t1", SUCCEEDED)
    protocol = AilabProtocol()
    by_get = protocol.respond(call("GET", query={"task_id": "t1"}, headers=AILAB_KEY), sim)
    by_post = protocol.respond(call(body={"task_id": "t1"}, headers=AILAB_KEY), sim)
    for reply in (by_get, by_post):
        body = decoded(reply.body)
        assert reply.status == 200
        assert reply.task_ids == ("t1",)
        assert body["error_code"] == 0
        assert body["error_msg"] == ""
        assert body["error_detail"] == {
            "status_code": 200,
            "code": "",
            "code_message": "",
            "message": "",
        }
        assert body["task_status"] == 2
        assert body["result"][0].startswith(f"{BASE}/ailab/files/t1/")
    assert decoded(by_get.body)["request_id"] != decoded(by_post.body)["request_id"]


@pytest.mark.parametrize("headers", [{}, {"ailabapi-api-key": "wrong"}])
def test_ailab_refuses_a_missing_or_wrong_key_with_401(headers: dict[str, str]) -> None:
    sim, _ = make_sim()
    add_task(sim, "ailab", "t1")
    reply = AilabProtocol().respond(call("GET", query={"task_id": "t1"}, headers=headers), sim)
    body = decoded(reply.body)
    assert reply.status == 401
    assert (body["error_code"], body["error_msg"]) == (401, "Unauthorized")
    assert body["error_detail"]["code"] == "ERROR_INVALID_API_KEY"
    assert body["error_detail"]["status_code"] == 401
    assert "task_status" not in body


@pytest.mark.parametrize("query", [{"task_id": "nope"}, {}])
def test_ailab_unknown_task_is_the_docs_error_example(query: dict[str, str]) -> None:
    sim, _ = make_sim()
    reply = AilabProtocol().respond(call("GET", query=query, headers=AILAB_KEY), sim)
    body = decoded(reply.body)
    assert reply.status == 400
    assert body["error_code"] == 400
    assert body["error_msg"] == "Invalid task_id"
    assert body["error_detail"] == {
        "status_code": 400,
        "code": "ERROR_INVALID_TASK_ID",
        "code_message": "Invalid task ID",
        "message": "The provided task_id is invalid or expired",
    }


# --- aholo ---------------------------------------------------------------------


def aholo_query(**overrides: str) -> dict[str, str]:
    sign = aholo_sign(CREDS.aholo_app_secret, CREDS.aholo_app_key, CREDS.aholo_appuid, NOW_MS)
    query = {
        "appuid": CREDS.aholo_appuid,
        "appkey": CREDS.aholo_app_key,
        "timestamp": NOW_MS,
        "sign": sign,
    }
    return query | overrides


def test_aholo_sign_is_md5_of_secret_key_uid_timestamp() -> None:
    assert (
        aholo_sign("sim-aholo-secret", "sim-aholo-app", "sim-user", "1700000000000")
        == "29f02a7611accb988e6896069629ddc2"
    )


def test_aholo_lists_known_visible_ids_only() -> None:
    sim, clock = make_sim()
    add_task(sim, "aholo", "AAA", Step(at=0, state=State.QUEUED, native=1))
    add_task(sim, "aholo", "LATE", SUCCEEDED, visible_after_s=5)
    request = call(query=aholo_query(), body=["AAA", "NOPE", "LATE"])
    reply = AholoProtocol().respond(request, sim)
    assert reply.status == 200
    assert reply.task_ids == ("AAA", "NOPE", "LATE")
    assert decoded(reply.body) == {
        "c": "0",
        "d": [{"taskId": "AAA", "status": 1, "result": None}],
        "m": None,
        "f": "",
    }
    clock.advance(5)
    listed = decoded(AholoProtocol().respond(request, sim).body)["d"]
    assert [task["taskId"] for task in listed] == ["AAA", "LATE"]
    assert listed[1]["result"]["spzPath"].endswith("/point_cloud_compressed.spz")


def test_aholo_default_visibility_comes_from_the_config() -> None:
    sim, clock = make_sim(aholo_visible_after_s=2.0)
    add_task(sim, "aholo", "AAA")
    request = call(query=aholo_query(), body=["AAA"])
    assert decoded(AholoProtocol().respond(request, sim).body)["d"] == []
    clock.advance(2)
    assert len(decoded(AholoProtocol().respond(request, sim).body)["d"]) == 1


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"sign": "0" * 32}, "sign mismatch"),
        ({"appkey": "other"}, "invalid appkey"),
        ({"appuid": "other"}, "invalid appuid"),
        ({"sign": ""}, "missing query parameter: sign"),
        # Older than the ±5 minute window (and re-signed, so only the time is wrong).
        (
            {
                "timestamp": str(int(NOW_MS) - 301_000),
                "sign": aholo_sign(
                    CREDS.aholo_app_secret,
                    CREDS.aholo_app_key,
                    CREDS.aholo_appuid,
                    str(int(NOW_MS) - 301_000),
                ),
            },
            "timestamp expired",
        ),
        # Seconds instead of milliseconds is far outside the window.
        ({"timestamp": str(int(NOW_S))}, "timestamp expired"),
        ({"timestamp": "soon"}, "timestamp must be Unix milliseconds"),
    ],
)
def test_aholo_refusals_are_http_200_with_c_401(overrides: dict[str, str], reason: str) -> None:
    sim, _ = make_sim()
    add_task(sim, "aholo", "AAA")
    reply = AholoProtocol().respond(call(query=aholo_query(**overrides), body=["AAA"]), sim)
    assert reply.status == 200
    assert decoded(reply.body) == {"c": "401", "m": reason, "d": None, "f": ""}


def test_aholo_refusal_never_echoes_the_secret() -> None:
    sim, _ = make_sim()
    reply = AholoProtocol().respond(call(query=aholo_query(sign="x"), body=["A"]), sim)
    assert CREDS.aholo_app_secret.encode() not in reply.body


def test_aholo_body_must_be_an_array_of_ids() -> None:
    sim, _ = make_sim()
    reply = AholoProtocol().respond(call(query=aholo_query(), body={"ids": ["A"]}), sim)
    assert decoded(reply.body)["c"] == "400"


# --- tryon ---------------------------------------------------------------------


def tryon_body(inf_id: int | str = 2880, **overrides: str) -> dict[str, Any]:
    return {"openId": CREDS.tryon_open_id, "apiKey": CREDS.tryon_api_key, "infId": inf_id} | (
        overrides
    )


def test_tryon_answers_and_charges_a_tenth_of_a_coin() -> None:
    sim, _ = make_sim(tryon_balance=10.0)
    add_task(sim, "tryon", "2880", Step(at=0, state=State.QUEUED, position=4))
    reply = TryonProtocol().respond(call(body=tryon_body()), sim)
    envelope = decoded(reply.body)
    assert (envelope["code"], envelope["msg"]) == (200, "ok")
    assert envelope["data"]["state"] == 1
    assert envelope["data"]["position"] == 4
    assert envelope["data"]["id"] == 2880
    assert sim.stats()["coins_spent"] == {"tryon": 0.1}
    assert sim.stats()["balance"] == {"tryon": 9.9}


def test_tryon_accepts_a_numeric_string_id() -> None:
    sim, _ = make_sim()
    add_task(sim, "tryon", "7", SUCCEEDED)
    envelope = decoded(TryonProtocol().respond(call(body=tryon_body("7")), sim).body)
    assert envelope["data"]["state"] == 2


@pytest.mark.parametrize("field", ["openId", "apiKey"])
def test_tryon_wrong_credentials_are_code_401_and_free(field: str) -> None:
    sim, _ = make_sim()
    add_task(sim, "tryon", "2880")
    reply = TryonProtocol().respond(call(body=tryon_body(**{field: "wrong"})), sim)
    assert reply.status == 200
    assert decoded(reply.body) == {"code": 401, "msg": "invalid openId or apiKey"}
    assert sim.stats()["coins_spent"] == {"tryon": 0.0}


def test_tryon_unknown_task_is_code_404_and_still_charged() -> None:
    sim, _ = make_sim()
    reply = TryonProtocol().respond(call(body=tryon_body(1)), sim)
    assert decoded(reply.body) == {"code": 404, "msg": "task not found"}
    assert sim.stats()["coins_spent"] == {"tryon": 0.1}


def test_tryon_without_coins_answers_state_minus_two_and_charges_nothing() -> None:
    sim, _ = make_sim(tryon_balance=0.2)
    add_task(sim, "tryon", "5")
    protocol = TryonProtocol()
    states = [
        decoded(protocol.respond(call(body=tryon_body(5)), sim).body)["data"]["state"]
        for _ in range(4)
    ]
    assert states == [1, 1, -2, -2]
    assert sim.stats()["coins_spent"] == {"tryon": 0.2}
    assert sim.stats()["balance"] == {"tryon": 0.0}


def test_tryon_unreadable_body_is_code_400() -> None:
    sim, _ = make_sim()
    reply = TryonProtocol().respond(call(body=b"openId=x"), sim)
    assert decoded(reply.body)["code"] == 400


# --- genpic --------------------------------------------------------------------


def genpic_body(uids: list[str], **overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "Action": "ListGenerateTaskDetail",
        "PublicKey": CREDS.genpic_public_key,
        "request_uuid": "4d9c1b5e-0000-4000-8000-000000000000",
        "TaskUIDs": uids,
    }
    params["Signature"] = genpic_signature(params, CREDS.genpic_private_key)
    return params | overrides


def test_genpic_signature_is_sha1_of_sorted_flattened_pairs_and_private_key() -> None:
    params = {
        "TaskUIDs": ["taskuid1", "taskuid2"],
        "request_uuid": "4d9c1b5e-0000-4000-8000-000000000000",
        "PublicKey": "sim-genpic-public",
        "Action": "ListGenerateTaskDetail",
        "Signature": "ignored",
    }
    # sha1("Action…PublicKey…TaskUIDs.0taskuid1TaskUIDs.1taskuid2request_uuid…" + private key)
    expected = "7ed7e39827ac23a6849db4b735bb9252955315cf"
    assert genpic_signature(params, "sim-genpic-private") == expected
    assert genpic_signature(dict(reversed(params.items())), "sim-genpic-private") == expected
    assert genpic_signature(params | {"TaskUIDs": ["taskuid2", "taskuid1"]}, "x") != (
        genpic_signature(params, "x")
    )


def test_genpic_lists_known_tasks() -> None:
    sim, _ = make_sim()
    add_task(sim, "genpic", "U1", SUCCEEDED)
    reply = GenpicProtocol().respond(call(body=genpic_body(["U1", "U404"])), sim)
    body = decoded(reply.body)
    assert reply.task_ids == ("U1", "U404")
    assert body["Action"] == "ListGenerateTaskDetailResponse"
    assert (body["RetCode"], body["Message"]) == (0, "")
    assert [detail["TaskUid"] for detail in body["TaskDetailList"]] == ["U1"]
    assert body["TaskDetailList"][0]["TaskStatus"] == "Finished"


@pytest.mark.parametrize(
    ("overrides", "ret_code", "message"),
    [
        ({"Action": "DeleteTask"}, 160, "Action not found"),
        ({"PublicKey": "someone-else"}, 172, "PublicKey not found"),
        ({"Signature": "0" * 40}, 171, "Signature VerifyAC Error"),
        ({"request_uuid": "tampered"}, 171, "Signature VerifyAC Error"),
    ],
)
def test_genpic_refusals(overrides: dict[str, str], ret_code: int, message: str) -> None:
    sim, _ = make_sim()
    add_task(sim, "genpic", "U1")
    reply = GenpicProtocol().respond(call(body=genpic_body(["U1"], **overrides)), sim)
    body = decoded(reply.body)
    assert reply.status == 200
    assert (body["RetCode"], body["Message"]) == (ret_code, message)
    assert "TaskDetailList" not in body


# --- videoproc -----------------------------------------------------------------


def test_videoproc_unknown_task_is_404_detail() -> None:
    sim, _ = make_sim()
    reply = VideoprocProtocol().respond(call("GET", path_params={"task_id": "x"}), sim)
    assert reply.status == 404
    assert decoded(reply.body) == {"detail": "Task not found"}


def test_videoproc_known_task() -> None:
    sim, _ = make_sim()
    add_task(sim, "videoproc", "v1", Step(at=0, state=State.RUNNING, progress=45))
    reply = VideoprocProtocol().respond(call("GET", path_params={"task_id": "v1"}), sim)
    body = decoded(reply.body)
    assert reply.status == 200
    assert (body["task_id"], body["status"], body["progress"]) == ("v1", "processing", 45)
