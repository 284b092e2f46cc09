"""genpic adapter against docs/providers/genpic.md."""

from __future__ import annotations

import hashlib
import json

import pytest

from gateway.core.model import ErrorInfo, FaultKind, Result, State
from gateway.providers.genpic import GenpicAdapter
from tests.unit.providers.support import (
    GENPIC_PRIVATE,
    GENPIC_PUBLIC,
    REQUEST_ID,
    build,
    fault_of,
    genpic,
    observe,
    reply,
)

# "Request Example", verbatim.
REQUEST_EXAMPLE = """{
	"Action": "ListGenerateTaskDetail",
    "PublicKey": "ALLak9M4cNdHXKOJAJJ4k8Hh1hZS2EgJF1D0FlPwfl",
    "Signature": "83a99d5f74dab5a46b1b9d4c3ec0d3ec5595c958",
	"TaskUIDs": [
		"taskuid1",
		"taskuid2"
	]
}"""

# "Response Example", verbatim.
RESPONSE_EXAMPLE = """{
	"Action": "ListGenerateTaskDetail",
	"RetCode": 0,
	"Message": "",
	"TaskDetailList": [
		{
			"TaskUid": "taskuid1",
			"TaskType": "TaskGeneratePicture",
			"TaskStatus": "Finished",
			"FinalPictureUrls": [
				"xxxxxx"
			],
			"TaskErrorMsg": "",
			"TaskErrorCode": 0
		},
		{
			"TaskUid": "taskuid2",
			"TaskType": "TaskGeneratePicture",
			"TaskStatus": "Finished",
			"FinalPictureUrls": [
				"xxxxxx"
			],
			"TaskErrorMsg": "",
			"TaskErrorCode": 0
		}
	]
}"""

IDS = ("taskuid1", "taskuid2")


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def details(*tasks: dict[str, object], ret_code: int = 0) -> dict[str, object]:
    return {"Action": "ListGenerateTaskDetail", "RetCode": ret_code, "TaskDetailList": list(tasks)}


def test_request_has_the_shape_of_the_doc_example() -> None:
    example = json.loads(REQUEST_EXAMPLE)
    request = build(genpic(), example["TaskUIDs"])
    assert request.method == "POST"
    assert request.url == "https://genpic.example.com/api"  # the base URL is the endpoint
    assert request.body is not None
    body = json.loads(request.body)
    assert list(body) == ["Action", "PublicKey", "Signature", "request_uuid", "TaskUIDs"]
    assert {k: body[k] for k in ("Action", "PublicKey", "TaskUIDs")} == {
        k: example[k] for k in ("Action", "PublicKey", "TaskUIDs")
    }
    assert body["request_uuid"] == REQUEST_ID
    assert request.task_ids == IDS


def test_signature_of_the_doc_example_request() -> None:
    request = build(genpic(), IDS)
    assert request.body is not None
    expected = sha1(
        "Action" + "ListGenerateTaskDetail"
        + "PublicKey" + GENPIC_PUBLIC
        + "TaskUIDs.0" + "taskuid1"
        + "TaskUIDs.1" + "taskuid2"
        + "request_uuid" + REQUEST_ID
        + GENPIC_PRIVATE
    )  # fmt: skip
    assert json.loads(request.body)["Signature"] == expected


def test_signature_sorts_keys_after_flattening() -> None:
    ids = [f"t{n}" for n in range(11)]
    request = build(genpic(), ids)
    assert request.body is not None
    # "TaskUIDs.10" sorts between "TaskUIDs.1" and "TaskUIDs.2".
    order = [0, 1, 10, 2, 3, 4, 5, 6, 7, 8, 9]
    text = "ActionListGenerateTaskDetail" + "PublicKey" + GENPIC_PUBLIC
    text += "".join(f"TaskUIDs.{n}t{n}" for n in order)
    text += "request_uuid" + REQUEST_ID + GENPIC_PRIVATE
    assert json.loads(request.body)["Signature"] == sha1(text)


def test_defaults() -> None:
    assert (GenpicAdapter.defaults.interval_s, GenpicAdapter.defaults.batch_size) == (5.0, 50)


def test_doc_response_example() -> None:
    adapter = genpic()
    observations = observe(adapter, build(adapter, IDS), reply(RESPONSE_EXAMPLE))
    for observation in observations:
        assert observation.state is State.SUCCEEDED
        assert observation.result == Result(urls=("xxxxxx",))
        assert observation.upstream == {"TaskStatus": "Finished"}
        assert (observation.error, observation.fault) == (None, None)


@pytest.mark.parametrize(
    ("status", "state"), [("Queuing", State.QUEUED), ("Running", State.RUNNING)]
)
def test_in_progress_statuses(status: str, state: State) -> None:
    adapter = genpic()
    body = details({"TaskUid": "taskuid1", "TaskStatus": status, "FinalPictureUrls": []})
    first, second = observe(adapter, build(adapter, IDS), reply(body))
    assert (first.state, first.upstream) == (state, {"TaskStatus": status})
    assert (second.state, second.message) == (State.UNKNOWN, "not visible upstream yet")


def test_error_status_carries_the_task_error() -> None:
    adapter = genpic()
    task = {
        "TaskUid": "taskuid2",
        "TaskStatus": "Error",
        "TaskErrorMsg": "nsfw",
        "TaskErrorCode": 3,
    }
    _, second = observe(adapter, build(adapter, IDS), reply(details(task)))
    assert second.state is State.FAILED
    assert second.error == ErrorInfo("3", "nsfw")


@pytest.mark.parametrize(("ret_code", "status"), [(171, 200), (172, 200), (500, 403)])
def test_signature_or_key_refused_is_a_non_retryable_auth_fault(ret_code: int, status: int) -> None:
    adapter = genpic()
    body = {"RetCode": ret_code, "Message": "Signature VerifyAC Error"}
    for observation in observe(adapter, build(adapter, IDS), reply(body, status)):
        fault = fault_of(observation)
        assert (fault.kind, fault.retryable) == (FaultKind.AUTH, False)
        assert fault.message == f"genpic API error (RetCode {ret_code}: Signature VerifyAC Error)"


def test_other_ret_codes_are_server_faults() -> None:
    adapter = genpic()
    body = {"RetCode": 230, "Message": ""}
    for observation in observe(adapter, build(adapter, IDS), reply(body)):
        fault = fault_of(observation)
        assert (fault.kind, fault.message) == (FaultKind.SERVER, "genpic API error (RetCode 230)")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"TaskDetailList": []}, "genpic reply: field 'RetCode' is missing"),
        ({"RetCode": "0"}, "genpic reply: field 'RetCode' is a str, expected an int"),
        (
            {"RetCode": 0, "TaskDetailList": {}},
            "genpic reply: field 'TaskDetailList' is an object, expected a list or null",
        ),
        (
            details({"TaskStatus": "Running"}),
            "genpic reply: field 'TaskDetailList[0].TaskUid' is missing",
        ),
        (
            details({"TaskUid": "taskuid1", "TaskStatus": "Finished", "FinalPictureUrls": "x"}),
            "genpic reply: field 'TaskDetailList[0].FinalPictureUrls' is a str, expected a list or null",  # noqa: E501
        ),
        (
            details({"TaskUid": "taskuid1", "TaskStatus": "Error", "TaskErrorCode": "E1"}),
            "genpic reply: field 'TaskDetailList[0].TaskErrorCode' is a str, expected an int or null",  # noqa: E501
        ),
    ],
)
def test_wrong_shapes_are_named_precisely(body: object, message: str) -> None:
    adapter = genpic()
    for observation in observe(adapter, build(adapter, IDS), reply(body)):
        fault = fault_of(observation)
        assert (fault.kind, fault.message) == (FaultKind.MALFORMED, message)


def test_unlisted_status_is_unknown_and_kept_raw() -> None:
    adapter = genpic()
    body = details({"TaskUid": "taskuid1", "TaskStatus": "Paused"})
    first, _ = observe(adapter, build(adapter, IDS), reply(body))
    assert first.state is State.UNKNOWN
    assert first.upstream == {"TaskStatus": "Paused"}
    assert first.message == "unrecognized upstream status 'Paused'"
