"""The declarative examples (deploy/examples/*.toml) against the built-in adapters.

All five providers written as ``kind = "http"`` configurations — aholo's md5
``sign`` and genpic's sha1 ``Signature`` declared in ``request.sign``, tryon's
integer ``infId`` and queue rules in the mapping — must behave exactly like
the built-in adapters on the same simulator timelines:

* the round trips of ``test_roundtrip.py`` (every step, usable results,
  failures, refused credentials) pass with the declarative adapter;
* in lock step on a simulator whose clock only moves when told, both adapters
  read every step into *equal* observations, and the tracker turns them into
  equal event sequences;
* through a live gateway, a built-in and a declarative provider following the
  same upstream task stream the same events.
"""

from __future__ import annotations

import asyncio
import json
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway.cli import main
from gateway.config import _interpolate, load_config
from gateway.core import tracker
from gateway.core.model import Event, FaultKind, Observation, State
from gateway.providers.base import Adapter, UpstreamResponse
from gateway.providers.declarative import DeclarativeAdapter
from gateway.sim import SIM_CREDENTIALS, Simulator
from tests.integration import test_roundtrip as roundtrip
from tests.integration.conftest import create_sim_task, events_url
from tests.integration.gateway_server import FAST, running_gateway, sim_config
from tests.integration.readers import read_sse
from tests.integration.sim_server import ManualClock, running_sim

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
KINDS = ["ailab", "aholo", "tryon", "genpic", "videoproc"]
BATCH_KINDS = ["aholo", "genpic"]


def example_env(sim_url: str) -> dict[str, str]:
    creds = SIM_CREDENTIALS
    return {
        "VIDEOPROC_BASE_URL": f"{sim_url}/videoproc",
        "AILAB_BASE_URL": f"{sim_url}/ailab",
        "AILAB_API_KEY": creds.ailab_api_key,
        "AHOLO_BASE_URL": f"{sim_url}/aholo",
        "AHOLO_APP_KEY": creds.aholo_app_key,
        "AHOLO_APP_SECRET": creds.aholo_app_secret,
        "AHOLO_APPUID": creds.aholo_appuid,
        "TRYON_BASE_URL": f"{sim_url}/tryon",
        "TRYON_OPEN_ID": creds.tryon_open_id,
        "TRYON_API_KEY": creds.tryon_api_key,
        "TRYON_OSS_BASE": creds.provider_credentials(sim_url)["tryon"]["oss_base"],
        "GENPIC_BASE_URL": f"{sim_url}/genpic",
        "GENPIC_PUBLIC_KEY": creds.genpic_public_key,
        "GENPIC_PRIVATE_KEY": creds.genpic_private_key,
    }


def declarative(kind: str, sim_url: str, **wrong: str) -> Adapter:
    """The provider of ``deploy/examples/{kind}.toml``, loaded as a user would, on the sim."""
    config = load_config(EXAMPLES / f"{kind}.toml", env=example_env(sim_url) | wrong)
    adapter = config.runtimes()[kind].adapter
    assert isinstance(adapter, DeclarativeAdapter)
    return adapter


def example_table(kind: str, sim_url: str) -> dict[str, Any]:
    """The example's provider table, environment applied (for a gateway config document)."""
    document = tomllib.loads((EXAMPLES / f"{kind}.toml").read_text())
    table: dict[str, Any] = _interpolate(document, example_env(sim_url), "")["providers"][kind]
    return table


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with running_sim() as url:
        yield url


# --- the same round trips as the built-in adapters -----------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_declarative_adapter_sees_every_step_and_a_usable_result(
    sim_url: str, kind: str
) -> None:
    body, expected = roundtrip.SUCCESS_CASES[kind]
    adapter = declarative(kind, sim_url)
    async with httpx.AsyncClient(timeout=2.0) as http:
        task_id = await roundtrip.create_task(http, sim_url, kind, **body)
        seen = await roundtrip.observe_until_terminal(adapter, http, task_id)
        assert [roundtrip.signature(o) for o in seen] == list(expected)
        result = seen[-1].result
        assert result is not None and result.urls
        for url in result.urls:
            assert url.startswith(f"{sim_url}/"), url
            fetched = await http.get(url)
            assert fetched.status_code == 200, url


@pytest.mark.parametrize("kind", KINDS)
async def test_declarative_adapter_sees_a_failure(sim_url: str, kind: str) -> None:
    adapter = declarative(kind, sim_url)
    steps = [{"at": 0, "state": "running"}, {"at": 0.15, "state": "failed", "message": "bad photo"}]
    async with httpx.AsyncClient(timeout=2.0) as http:
        task_id = await roundtrip.create_task(http, sim_url, kind, timeline=steps)
        seen = await roundtrip.observe_until_terminal(adapter, http, task_id)
    assert [o.state for o in seen] == [State.RUNNING, State.FAILED]
    assert seen[-1].error is not None and seen[-1].result is None
    if kind in roundtrip.FAILURE_MESSAGES:
        assert roundtrip.FAILURE_MESSAGES[kind] in seen[-1].error.message


WRONG_CREDENTIALS = {
    "ailab": {"AILAB_API_KEY": "not-the-key"},
    "aholo": {"AHOLO_APP_SECRET": "not-the-secret"},  # only the md5 sign changes
    "tryon": {"TRYON_API_KEY": "not-the-tryon-key"},
    "genpic": {"GENPIC_PRIVATE_KEY": "not-the-private-key"},  # only the sha1 changes
}


@pytest.mark.parametrize("kind", list(WRONG_CREDENTIALS))
async def test_declarative_wrong_key_is_a_non_retryable_auth_fault(sim_url: str, kind: str) -> None:
    wrong = WRONG_CREDENTIALS[kind]
    adapter = declarative(kind, sim_url, **wrong)
    async with httpx.AsyncClient(timeout=2.0) as http:
        task_id = await roundtrip.create_task(http, sim_url, kind)
        observation = await roundtrip.poll_once(adapter, http, task_id)
    assert observation.fault is not None
    assert observation.fault.kind is FaultKind.AUTH
    assert observation.fault.retryable is False
    [value] = wrong.values()
    assert value not in observation.fault.message
    assert value in adapter.secret_values()


# --- lock step: equal observations, equal events ----------------------------------------

STEP_S = 1.0


def steps(*states: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"at": index * STEP_S, **state} for index, state in enumerate(states)]


LOCKSTEP_CASES: dict[str, dict[str, list[dict[str, Any]]]] = {
    "ailab": {
        "success": steps({"state": "queued"}, {"state": "running"}, {"state": "succeeded"}),
        "failure": steps({"state": "running"}, {"state": "failed", "message": "bad photo"}),
        "unlisted status": steps({"state": "running"}, {"state": "running", "native": 7}),
        "custom result": steps(
            {"state": "running"}, {"state": "succeeded", "result": ["https://cdn.example/a.png"]}
        ),
    },
    "aholo": {
        "success": steps(
            {"state": "queued"},
            {"state": "queued", "native": 1},
            {"state": "running", "native": 8},
            {"state": "running"},
            {"state": "succeeded"},
        ),
        "failure": steps({"state": "running"}, {"state": "failed"}),
        "cancelled": steps({"state": "queued"}, {"state": "cancelled"}),
        "timed out": steps({"state": "running"}, {"state": "expired"}),
        "rejected": steps({"state": "queued"}, {"state": "rejected"}),
        "unlisted status": steps({"state": "running"}, {"state": "running", "native": 42}),
        "custom result": steps(
            {"state": "running"},
            {
                "state": "succeeded",
                "result": ["https://cdn.example/a.ply", "https://cdn.example/a.spz"],
            },
        ),
    },
    "tryon": {
        "success": steps(
            {"state": "queued", "position": 3},
            {"state": "queued", "position": 1},
            {"state": "running"},
            {"state": "succeeded"},
        ),
        "failure": steps({"state": "running"}, {"state": "failed", "message": "bad photo"}),
        "default failure text": steps({"state": "queued", "position": 2}, {"state": "failed"}),
        "not enough coins": steps({"state": "running"}, {"state": "failed", "native": -2}),
        "unlisted status": steps({"state": "running"}, {"state": "running", "native": 9}),
        "absolute result": steps(
            {"state": "running"},
            {
                "state": "succeeded",
                "result": ["https://cdn.example/b.png", "https://cdn.example/s.png"],
            },
        ),
    },
    "genpic": {
        "success": steps({"state": "queued"}, {"state": "running"}, {"state": "succeeded"}),
        "failure": steps({"state": "running"}, {"state": "failed", "message": "bad prompt"}),
        "unlisted status": steps({"state": "running"}, {"state": "running", "native": "Paused"}),
        "custom result": steps(
            {"state": "queued"},
            {
                "state": "succeeded",
                "result": ["https://cdn.example/1.png", "https://cdn.example/2.png"],
            },
        ),
    },
    "videoproc": {
        "success": steps(
            {"state": "queued"},
            {"state": "running", "progress": 40, "message": "downloading"},
            {"state": "running", "progress": 80},
            {"state": "succeeded"},
        ),
        "failure": steps({"state": "running", "progress": 30}, {"state": "failed"}),
        "unlisted status": steps({"state": "running"}, {"state": "running", "native": "paused"}),
        "relative and absolute files": steps(
            {"state": "queued"},
            {"state": "succeeded", "result": ["/api/download/v.mp4", "https://cdn.example/a.mp3"]},
        ),
    },
}


WALL_S = 1_763_719_205.0  # the lock-step simulator's wall clock (aholo checks timestamps)


@pytest.fixture(scope="module")
def manual() -> Iterator[tuple[str, ManualClock]]:
    clock = ManualClock()
    with running_sim(simulator=Simulator(clock=clock, wall_clock=lambda: WALL_S)) as url:
        yield url, clock


async def poll(adapter: Adapter, http: httpx.AsyncClient, task_ids: list[str]) -> list[Observation]:
    """One real request for ``task_ids``, signed at the simulator's wall clock."""
    request = adapter.build_request(
        task_ids, now_ms=int(WALL_S * 1000), request_id=str(uuid.uuid4())
    )
    response = await http.request(
        request.method,
        request.url,
        params=request.params or None,
        headers=list(request.headers),
        content=request.body,
    )
    headers = {name.lower(): value for name, value in response.headers.items()}
    return adapter.parse(request, UpstreamResponse(response.status_code, headers, response.content))


async def _poll_pair(
    http: httpx.AsyncClient, builtin: Adapter, declared: Adapter, task_id: str
) -> tuple[Observation, Observation]:
    [ours] = await poll(builtin, http, [task_id])
    [theirs] = await poll(declared, http, [task_id])
    return ours, theirs


def _events(observations: list[Observation], task: str) -> list[dict[str, Any]]:
    """What the tracker makes of the observations, timestamps and task name left out."""
    events: list[Event] = []
    for index, observation in enumerate(observations):
        event = tracker.observe(events[-1] if events else None, observation, task=task, now=index)
        if event is not None:
            events.append(event)
    return [{k: v for k, v in msgspec.to_builtins(e).items() if k not in ("task",)} for e in events]


@pytest.mark.parametrize(
    ("kind", "case"), [(kind, case) for kind, cases in LOCKSTEP_CASES.items() for case in cases]
)
async def test_declarative_and_builtin_read_every_step_identically(
    manual: tuple[str, ManualClock], kind: str, case: str
) -> None:
    url, clock = manual
    timeline = LOCKSTEP_CASES[kind][case]
    builtin = roundtrip.make_adapter(kind, url)
    declared = declarative(kind, url)
    builtin_seen: list[Observation] = []
    declared_seen: list[Observation] = []
    async with httpx.AsyncClient(timeout=2.0) as http:
        task_id = await roundtrip.create_task(http, url, kind, timeline=timeline)
        for _ in timeline:
            ours, theirs = await _poll_pair(http, builtin, declared, task_id)
            assert ours.fault is None
            assert theirs == ours
            builtin_seen.append(ours)
            declared_seen.append(theirs)
            clock.advance(STEP_S)
    builtin_events = _events(builtin_seen, task=f"{kind}:{task_id}")
    assert _events(declared_seen, task=f"{kind}:{task_id}") == builtin_events
    assert builtin_events
    if case == "unlisted status":
        # Kept raw, guessed at by neither: an ``unknown`` reading with the value.
        assert declared_seen[-1].state is State.UNKNOWN
        assert declared_seen[-1].message is not None
        assert "unrecognized upstream status" in declared_seen[-1].message
    else:
        assert builtin_events[-1]["terminal"] is True


@pytest.mark.parametrize("kind", KINDS)
async def test_declarative_and_builtin_agree_on_an_unknown_task(
    manual: tuple[str, ManualClock], kind: str
) -> None:
    url, _ = manual
    # tryon ids are integers (infId); the others take any text.
    missing = (
        str(uuid.uuid4().int % 10**12) if kind == "tryon" else f"no-such-{uuid.uuid4().hex[:8]}"
    )
    async with httpx.AsyncClient(timeout=2.0) as http:
        ours, theirs = await _poll_pair(
            http, roundtrip.make_adapter(kind, url), declarative(kind, url), missing
        )
    assert ours.fault is None
    if kind in BATCH_KINDS:
        # A batch reply that leaves an id out: "not visible upstream yet", no error.
        assert ours.state is State.UNKNOWN and ours.message == "not visible upstream yet"
    else:
        assert ours.error is not None
    assert theirs == ours


@pytest.mark.parametrize("kind", BATCH_KINDS)
async def test_declarative_and_builtin_read_a_whole_batch_identically(
    manual: tuple[str, ManualClock], kind: str
) -> None:
    """Many ids in one signed request: the same observation for each, in request order."""
    url, clock = manual
    timelines = [
        steps({"state": "queued"}, {"state": "running"}, {"state": "succeeded"}),
        steps({"state": "running"}, {"state": "failed", "message": "bad input"}),
        steps({"state": "queued"}, {"state": "queued"}, {"state": "cancelled"}),
    ]
    builtin = roundtrip.make_adapter(kind, url)
    declared = declarative(kind, url)
    async with httpx.AsyncClient(timeout=2.0) as http:
        ids = [await roundtrip.create_task(http, url, kind, timeline=t) for t in timelines]
        # Twelve ids: the flattened TaskUIDs.10 and .11 sort before .2 in genpic's signature.
        ids += [f"absent-{n}-{uuid.uuid4().hex[:6]}" for n in range(9)]
        rounds = []
        for _ in range(3):
            ours = await poll(builtin, http, ids)
            theirs = await poll(declared, http, ids)
            assert all(o.fault is None for o in ours), ours
            assert theirs == ours
            rounds.append(ours)
            clock.advance(STEP_S)
    states = [o.state for o in rounds[-1][:3]]
    assert states[0] is State.SUCCEEDED and states[1] is State.FAILED
    assert all(o.state is State.UNKNOWN for o in rounds[-1][3:])


# --- through a live gateway -----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_gateway_streams_the_same_events_for_builtin_and_declarative(
    sim: str, client: httpx.AsyncClient, kind: str
) -> None:
    name = f"{kind}-decl"
    doc = sim_config(sim)
    doc["providers"][name] = {**example_table(kind, sim), **FAST}
    timeline = [
        {"at": 0, "state": "queued"},
        {"at": 1.0, "state": "running", "progress": 50, "message": "working"},
        {"at": 2.0, "state": "succeeded"},
    ]
    task = await create_sim_task(client, sim, kind, timeline)
    task_id = task.partition(":")[2]
    both = [task, f"{name}:{task_id}"]
    with running_gateway(doc) as (base, _gw):
        for key in both:
            provider, _, _ = key.partition(":")
            reply = await client.post(
                f"{base}/v1/tasks", json={"provider": provider, "task_id": task_id}
            )
            assert reply.status_code == 201, reply.text
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            snapshots = [
                (await client.get(f"{base}/v1/tasks/{key.replace(':', '/', 1)}")).json()
                for key in both
            ]
            if all(s["terminal"] for s in snapshots):
                break
            await asyncio.sleep(0.2)
        # The whole history of each, from seq 1 (a resume from "0").
        builtin, declared = [
            await read_sse(client, events_url(base, key) + "?last_event_id=0") for key in both
        ]

    def comparable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # eta_s is the gateway's own estimate (timing, and the built-in kinds'
        # typical durations), not something the upstream said.
        drop = {"task", "updated_at", "observed_at", "eta_s", "_id", "_event"}
        return [{k: v for k, v in e.items() if k not in drop} for e in events]

    # ailab: queued, running, succeeded; videoproc ("processing" at 0 %, then 50 %): three too.
    assert [e["seq"] for e in builtin] == [1, 2, 3]
    assert builtin[-1]["state"] == "succeeded"
    assert builtin[-1]["result"]["urls"]
    assert comparable(declared) == comparable(builtin)


# --- pollcast check-config --probe --------------------------------------------------------


def test_probe_shows_the_raw_reply_next_to_the_observation(
    sim_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    created = httpx.post(
        f"{sim_url}/_sim/tasks",
        json={"provider": "ailab", "timeline": [{"at": 0, "state": "succeeded"}]},
    )
    task_id = created.json()["task_id"]
    for name, value in example_env(sim_url).items():
        monkeypatch.setenv(name, value)
    example = str(EXAMPLES / "ailab.toml")

    assert main(["check-config", "-c", example, "--probe", f"ailab:{task_id}"]) == 0
    out = capsys.readouterr().out
    request, raw, normalized = (
        out.split("── request")[1],
        out.split("── reply")[1].split("── observation")[0],
        out.split("── observation")[1],
    )
    assert f"GET {sim_url}/ailab/common/query-async-task-result?task_id={task_id}" in request
    assert "ailabapi-api-key: [redacted]" in request
    assert "HTTP 200 OK" in raw and '"task_status": 2' in raw and '"error_code": 0' in raw
    [observation] = json.loads(normalized.split("\n", 1)[1])
    assert observation["state"] == "succeeded"
    assert observation["result"]["urls"][0].startswith(f"{sim_url}/ailab/files/{task_id}/")
    assert SIM_CREDENTIALS.ailab_api_key not in out

    # A refused key: the upstream's own reply, the auth fault, and still no key.
    monkeypatch.setenv("AILAB_API_KEY", "wrong-key-5kq8")
    assert main(["check-config", "-c", example, "--probe", f"ailab:{task_id}"]) == 1
    out = capsys.readouterr().out
    assert "HTTP 401 Unauthorized" in out and "ERROR_INVALID_API_KEY" in out
    assert '"kind": "auth"' in out
    assert "wrong-key-5kq8" not in out


def test_probe_of_an_unknown_provider_is_a_config_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AILAB_API_KEY", "k")
    assert main(["check-config", "-c", str(EXAMPLES / "ailab.toml"), "--probe", "nope:1"]) == 2
    assert "--probe: no provider named 'nope' (configured: ailab)" in capsys.readouterr().err
