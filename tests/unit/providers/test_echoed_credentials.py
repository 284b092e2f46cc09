"""Every adapter: a credential the upstream echoes, in any spelling and any field,
never reaches an observation (so never an event)."""

from __future__ import annotations

import msgspec
import pytest

from gateway.core.model import State
from gateway.providers.ailab import AilabAdapter, AilabSettings
from tests.security.spellings import spellings
from tests.unit.providers.support import (
    AHOLO_KEY,
    AHOLO_SECRET,
    AILAB_KEY,
    CASES,
    GENPIC_PRIVATE,
    GENPIC_PUBLIC,
    TRYON_KEY,
    TRYON_OPEN_ID,
    ailab,
    build,
    genpic,
    observe_one,
    reply,
)


def echo(*secrets: str) -> str:
    return " ".join(form for s in secrets for form in spellings(s))


def assert_clean(encoded: bytes, *secrets: str) -> None:
    text = encoded.decode()
    for secret in secrets:
        for form in spellings(secret):
            assert form not in text, f"{form[:6]}… leaked into {text}"
        # Not even a prefix, e.g. from a shortened status value.
        assert secret[:8] not in text, text


def test_a_status_value_made_of_a_credential_is_redacted_whole() -> None:
    """genpic copies the raw ``TaskStatus`` into ``upstream`` and, shortened, into the message."""
    status = echo(GENPIC_PUBLIC, GENPIC_PRIVATE)
    body = {
        "RetCode": 0,
        "TaskDetailList": [{"TaskUid": "taskuid1", "TaskStatus": status}],
    }
    observation = observe_one(genpic(), body, task_id="taskuid1")
    assert observation.state is State.UNKNOWN
    assert observation.upstream is not None
    assert observation.upstream["TaskStatus"].startswith("[redacted]")
    assert observation.message is not None and "[redacted]" in observation.message
    assert_clean(msgspec.json.encode(observation), GENPIC_PUBLIC, GENPIC_PRIVATE)


def test_error_texts_and_results_are_redacted() -> None:
    text = echo(AILAB_KEY)
    failed = observe_one(ailab(), {"error_code": 0, "task_status": -1, "error_msg": text})
    assert failed.error is not None and failed.error.message.startswith("[redacted]")
    done = observe_one(
        ailab(),
        {"error_code": 0, "task_status": 2, "result": [f"https://cdn/{text}/1.jpg"]},
    )
    assert done.result is not None and done.result.urls[0].startswith("https://cdn/[redacted]")
    api = observe_one(
        ailab(), {"error_code": 500, "error_detail": {"code": text, "message": text}}, status=500
    )
    for observation in (failed, done, api):
        assert_clean(msgspec.json.encode(observation), AILAB_KEY)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_no_adapter_lets_an_echo_through_any_reply(kind: str) -> None:
    """Whatever shape the reply has, the echo goes: every string field of the envelope
    and of each task object repeats every credential in every spelling."""
    factory, task_ids = CASES[kind]
    adapter = factory()
    secrets = adapter.secret_values()
    text = echo(AILAB_KEY, AHOLO_KEY, AHOLO_SECRET, TRYON_KEY, TRYON_OPEN_ID, *secrets)
    task = {
        "taskId": task_ids[0],
        "TaskUid": task_ids[0],
        "status": text,
        "TaskStatus": text,
        "message": text,
        "TaskErrorMsg": text,
        "infInfoEn": text,
        "error": text,
    }
    bodies = [
        {"error_code": 0, "task_status": -1, "error_msg": text},
        {"c": text, "m": text, "d": [task]},
        {"code": 1, "msg": text, "data": {"state": -1, "infInfoEn": text, "infInfo": text}},
        {"RetCode": 0, "Message": text, "TaskDetailList": [task]},
        {"RetCode": 7, "Message": text},
        task,
        text,
    ]
    request = build(adapter, task_ids)
    for body in bodies:
        for status in (200, 400, 500):
            observations = adapter.parse(request, reply(body, status))
            assert_clean(msgspec.json.encode(observations), *secrets)


def test_a_short_credential_is_redacted_only_where_it_stands_alone() -> None:
    adapter = AilabAdapter(AilabSettings(base_url="https://api.example.com", api_key="k9x7"))
    body = {
        "error_code": 0,
        "task_status": -1,
        "error_msg": "key k9x7 refused; see https://docs.example.com/k9x7abc",
    }
    (observation,) = adapter.parse(build(adapter, ["7f3c9e"]), reply(body))
    assert observation.error is not None
    assert observation.error.message == (
        "key [redacted] refused; see https://docs.example.com/k9x7abc"
    )
