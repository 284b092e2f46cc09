"""ailab adapter against docs/providers/ailab.md."""

from __future__ import annotations

import pytest

from gateway.core.model import ErrorInfo, FaultKind, Result, State
from gateway.providers.ailab import AilabAdapter
from tests.unit.providers.support import AILAB_KEY, ailab, build, fault_of, observe_one

# "响应示例", verbatim.
QUEUED = """{
  "request_id": "123456789",
  "log_id": "987654321",
  "error_code": 0,
  "error_msg": "",
  "error_detail": {
    "status_code": 200,
    "code": "",
    "code_message": "",
    "message": ""
  },
  "task_status": 0
}"""

RUNNING = """{
  "request_id": "123456789",
  "log_id": "987654321",
  "error_code": 0,
  "error_msg": "",
  "error_detail": {
    "status_code": 200,
    "code": "",
    "code_message": "",
    "message": ""
  },
  "task_status": 1
}"""

SUCCEEDED = """{
  "request_id": "123456789",
  "log_id": "987654321",
  "error_code": 0,
  "error_msg": "",
  "error_detail": {
    "status_code": 200,
    "code": "",
    "code_message": "",
    "message": ""
  },
  "task_status": 2,
  "result": [
    "https://example.com/result1.jpg",
    "https://example.com/result2.jpg",
    "https://example.com/result3.jpg",
    "https://example.com/result4.jpg"
  ]
}"""

FAILED = """{
  "request_id": "123456789",
  "log_id": "987654321",
  "error_code": 0,
  "error_msg": "",
  "error_detail": {
    "status_code": 200,
    "code": "",
    "code_message": "",
    "message": ""
  },
  "task_status": -1
}"""

ERROR = """{
  "request_id": "123456789",
  "log_id": "987654321",
  "error_code": 400,
  "error_msg": "Invalid task_id",
  "error_detail": {
    "status_code": 400,
    "code": "ERROR_INVALID_TASK_ID",
    "code_message": "Invalid task ID",
    "message": "The provided task_id is invalid or expired"
  }
}"""

# How the simulator (and, per the OpenAPI section, ailab) refuses a key: HTTP 401 + envelope.
BAD_KEY = {
    "request_id": "1",
    "log_id": "2",
    "error_code": 401,
    "error_msg": "Unauthorized",
    "error_detail": {
        "status_code": 401,
        "code": "ERROR_INVALID_API_KEY",
        "code_message": "Invalid API key",
        "message": "The API key is invalid",
    },
}


def envelope(**fields: object) -> dict[str, object]:
    return {"request_id": "1", "log_id": "2", "error_code": 0, "error_msg": "", **fields}


def test_request_is_the_openapi_get_with_the_key_header() -> None:
    request = build(ailab(), ["task_123456789"])
    assert request.method == "GET"
    assert request.url == "https://api.aihairstyle.cn/common/query-async-task-result"
    assert request.params == (("task_id", "task_123456789"),)
    assert request.headers == (("ailabapi-api-key", AILAB_KEY),)
    assert request.body is None
    assert request.task_ids == ("task_123456789",)


def test_one_task_per_request() -> None:
    with pytest.raises(ValueError, match="exactly one task"):
        build(ailab(), ["a", "b"])


def test_defaults_follow_the_doc() -> None:
    assert AilabAdapter.defaults.interval_s == 5.0  # "建议每 5 秒查询一次结果"
    assert AilabAdapter.defaults.result_ttl_s == 24 * 3600.0  # "有效期为 24 小时"
    assert AilabAdapter.defaults.batch_size == 1


@pytest.mark.parametrize(
    ("body", "state", "upstream"),
    [(QUEUED, State.QUEUED, {"task_status": 0}), (RUNNING, State.RUNNING, {"task_status": 1})],
)
def test_doc_examples_in_progress(body: str, state: State, upstream: dict[str, int]) -> None:
    observation = observe_one(ailab(), body)
    assert (observation.state, observation.upstream) == (state, upstream)
    assert (observation.fault, observation.result, observation.error) == (None, None, None)


def test_doc_example_succeeded_lists_the_result_urls() -> None:
    observation = observe_one(ailab(), SUCCEEDED)
    assert observation.state is State.SUCCEEDED
    assert observation.result == Result(
        urls=tuple(f"https://example.com/result{n}.jpg" for n in range(1, 5))
    )
    assert observation.upstream == {"task_status": 2}


def test_doc_example_failed() -> None:
    observation = observe_one(ailab(), FAILED)
    assert observation.state is State.FAILED
    assert observation.error == ErrorInfo("upstream_failed", "task failed")
    assert observation.upstream == {"task_status": -1}


def test_failure_message_comes_from_error_msg() -> None:
    observation = observe_one(ailab(), envelope(task_status=-1, error_msg="face not found"))
    assert observation.error == ErrorInfo("upstream_failed", "face not found")


@pytest.mark.parametrize("status", [200, 400])
def test_doc_error_example_fails_the_task(status: int) -> None:
    observation = observe_one(ailab(), ERROR, status=status)
    assert observation.fault is None
    assert observation.state is State.FAILED
    assert observation.error == ErrorInfo(
        "ERROR_INVALID_TASK_ID", "The provided task_id is invalid or expired"
    )
    assert observation.upstream == {"error_code": 400}


def test_api_error_without_detail_falls_back_to_error_code_and_msg() -> None:
    body = envelope(error_code=422, error_msg="bad input")
    assert observe_one(ailab(), body).error == ErrorInfo("422", "bad input")
    bare = observe_one(ailab(), envelope(error_code=422))
    assert bare.error == ErrorInfo("422", "error_code 422")


@pytest.mark.parametrize("status", [200, 401])
def test_refused_key_is_a_non_retryable_auth_fault(status: int) -> None:
    fault = fault_of(observe_one(ailab(), BAD_KEY, status=status))
    assert fault.kind is FaultKind.AUTH
    assert not fault.retryable
    assert fault.message == (
        "ailab API error (error_code 401 ERROR_INVALID_API_KEY: The API key is invalid)"
    )


def test_error_code_429_is_rate_limited_with_retry_after() -> None:
    body = envelope(error_code=429, error_msg="too many requests")
    fault = fault_of(observe_one(ailab(), body, status=429, headers={"retry-after": "7"}))
    assert (fault.kind, fault.retry_after_s) == (FaultKind.RATE_LIMITED, 7.0)
    fault = fault_of(observe_one(ailab(), body, status=200))
    assert fault.kind is FaultKind.RATE_LIMITED


def test_error_code_5xx_is_a_server_fault() -> None:
    fault = fault_of(observe_one(ailab(), envelope(error_code=500, error_msg="internal")))
    assert fault.kind is FaultKind.SERVER
    assert fault.retryable
    assert fault.message == "ailab API error (error_code 500: internal)"


def test_success_envelope_under_an_error_status_is_the_status_fault() -> None:
    fault = fault_of(observe_one(ailab(), RUNNING, status=502))
    assert (fault.kind, fault.message) == (FaultKind.SERVER, "ailab answered HTTP 502")


def test_an_echoed_key_is_scrubbed_from_upstream_text() -> None:
    body = envelope(error_code=401, error_msg=f"key {AILAB_KEY} is revoked")
    fault = fault_of(observe_one(ailab(), body, status=401))
    assert fault.message == "ailab API error (error_code 401: key [redacted] is revoked)"
    failed = observe_one(ailab(), envelope(task_status=-1, error_msg=f"bad {AILAB_KEY}"))
    assert failed.error == ErrorInfo("upstream_failed", "bad [redacted]")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (envelope(), "ailab reply: field 'task_status' is missing although error_code is 0"),
        (
            {"task_status": 2},
            "ailab reply: field 'error_code' is missing",
        ),
        (
            envelope(task_status="2"),
            "ailab reply: field 'task_status' is a str, expected an int or null",
        ),
        (
            envelope(task_status=2, result="x.jpg"),
            "ailab reply: field 'result' is a str, expected a list or null",
        ),
        (
            envelope(task_status=2, result=[1]),
            "ailab reply: field 'result[0]' is an int, expected a str",
        ),
        (envelope(error_code="0"), "ailab reply: field 'error_code' is a str, expected an int"),
        (
            envelope(error_detail=[]),
            "ailab reply: field 'error_detail' is a list, expected an object or null",
        ),
    ],
)
def test_wrong_shapes_are_named_precisely(body: object, message: str) -> None:
    fault = fault_of(observe_one(ailab(), body))
    assert (fault.kind, fault.message) == (FaultKind.MALFORMED, message)


def test_unlisted_status_is_unknown_and_kept_raw() -> None:
    observation = observe_one(ailab(), envelope(task_status=3))
    assert observation.state is State.UNKNOWN
    assert observation.upstream == {"task_status": 3}
    assert observation.message == "unrecognized upstream status 3"
    assert observation.fault is None
