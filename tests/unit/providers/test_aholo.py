"""aholo adapter against docs/providers/aholo.md."""

from __future__ import annotations

import hashlib
import json

import pytest

from gateway.core.model import ErrorInfo, FaultKind, Result, State
from gateway.providers.aholo import AholoAdapter
from tests.unit.providers.support import (
    AHOLO_KEY,
    AHOLO_SECRET,
    AHOLO_UID,
    NOW_MS,
    aholo,
    build,
    fault_of,
    observe,
    reply,
)

# "Request Body", verbatim.
ONE_ID_BODY = '["3FO4K4WBNNYV"]'
THREE_IDS_BODY = '["3FO4K4WBNNYV", "3FO4K4WBNNY2", "3FO4K4WBNNY3"]'

# "Response", verbatim.
RESPONSE = """{
"c": "0",
"d": [
{
"taskId": "3FO4K4WBNNYV",
"status": 3,
"result": {
"plyPath": "https://holo-cos.aholo3d.cn/.../point_cloud.ply",
"spzPath": "https://holo-cos.aholo3d.cn/.../point_cloud_compressed.spz",
"sogPath": "https://holo-cos.aholo3d.cn/.../point_cloud.sog"
}
}
],
"m": null,
"f": ""
}"""

IDS = ("3FO4K4WBNNYV", "3FO4K4WBNNY2", "3FO4K4WBNNY3")


def listing(*tasks: dict[str, object], c: object = "0") -> dict[str, object]:
    return {"c": c, "d": list(tasks), "m": None, "f": ""}


@pytest.mark.parametrize("body", [ONE_ID_BODY, THREE_IDS_BODY])
def test_request_body_is_the_docs_json_array(body: str) -> None:
    ids = json.loads(body)
    request = build(aholo(), ids)
    assert request.method == "POST"
    assert request.url == "https://openapi.kujiale.com/v2/aholo/project/task/list/by-ids"
    assert request.body is not None
    assert json.loads(request.body) == ids
    assert ("Content-Type", "application/json") in request.headers
    assert request.task_ids == tuple(ids)


def test_request_is_signed_with_md5_of_secret_key_uid_timestamp() -> None:
    request = build(aholo(), ["3FO4K4WBNNYV"])
    expected_sign = hashlib.md5(
        (AHOLO_SECRET + AHOLO_KEY + AHOLO_UID + str(NOW_MS)).encode()
    ).hexdigest()
    assert dict(request.params) == {
        "appuid": AHOLO_UID,
        "appkey": AHOLO_KEY,
        "timestamp": str(NOW_MS),
        "sign": expected_sign,
    }
    # The secret itself only ever travels inside the hash.
    assert AHOLO_SECRET not in repr(request)


def test_defaults_follow_the_doc() -> None:
    defaults = AholoAdapter.defaults
    assert (defaults.interval_s, defaults.batch_size) == (5.0, 100)
    assert defaults.typical_duration_s == (120.0, 600.0)


def test_doc_response_example_succeeds_and_the_other_ids_are_not_visible_yet() -> None:
    adapter = aholo()
    first, second, third = observe(adapter, build(adapter, IDS), reply(RESPONSE))
    assert first.state is State.SUCCEEDED
    assert first.upstream == {"status": 3}
    assert first.result == Result(
        urls=(
            "https://holo-cos.aholo3d.cn/.../point_cloud.ply",
            "https://holo-cos.aholo3d.cn/.../point_cloud_compressed.spz",
            "https://holo-cos.aholo3d.cn/.../point_cloud.sog",
        ),
        files={
            "ply": "https://holo-cos.aholo3d.cn/.../point_cloud.ply",
            "spz": "https://holo-cos.aholo3d.cn/.../point_cloud_compressed.spz",
            "sog": "https://holo-cos.aholo3d.cn/.../point_cloud.sog",
        },
    )
    for missing in (second, third):
        assert missing.state is State.UNKNOWN
        assert missing.message == "not visible upstream yet"
        assert missing.fault is None


def test_empty_result_paths_are_skipped() -> None:
    adapter = aholo()
    task = {"taskId": IDS[0], "status": 3, "result": {"plyPath": "", "spzPath": "s.spz"}}
    (observation,) = observe(adapter, build(adapter, IDS[:1]), reply(listing(task)))
    assert observation.result == Result(urls=("s.spz",), files={"spz": "s.spz"})


@pytest.mark.parametrize(
    ("status", "state", "message"),
    [
        (0, State.QUEUED, "queued"),
        (1, State.QUEUED, "waiting"),
        (8, State.RUNNING, "preprocessing"),
        (2, State.RUNNING, None),
        (5, State.CANCELLED, None),
        (6, State.EXPIRED, None),
        (7, State.REJECTED, None),
    ],
)
def test_status_enum(status: int, state: State, message: str | None) -> None:
    adapter = aholo()
    task = {"taskId": IDS[0], "status": status, "result": None}
    (observation,) = observe(adapter, build(adapter, IDS[:1]), reply(listing(task)))
    assert (observation.state, observation.message) == (state, message)
    assert observation.upstream == {"status": status}
    assert (observation.error, observation.result) == (None, None)


def test_status_4_is_failed() -> None:
    adapter = aholo()
    task = {"taskId": IDS[0], "status": 4, "result": None}
    (observation,) = observe(adapter, build(adapter, IDS[:1]), reply(listing(task)))
    assert observation.state is State.FAILED
    assert observation.error == ErrorInfo("upstream_failed", "task failed")


def test_batch_keeps_request_order_and_ignores_unrequested_items() -> None:
    adapter = aholo()
    body = listing(
        {"taskId": "someone-else", "status": 3, "result": None},
        {"taskId": IDS[2], "status": 2},
        {"taskId": IDS[0], "status": 0},
        {"taskId": IDS[0], "status": 4},  # a second report of the same id: the first wins
    )
    observations = observe(adapter, build(adapter, IDS), reply(body))
    assert [o.state for o in observations] == [State.QUEUED, State.UNKNOWN, State.RUNNING]


def test_empty_or_null_listing_means_nothing_visible_yet() -> None:
    adapter = aholo()
    for body in (listing(), {"c": "0", "d": None}, {"c": 0}):
        observations = observe(adapter, build(adapter, IDS), reply(body))
        assert all(o.message == "not visible upstream yet" for o in observations)


@pytest.mark.parametrize(("c", "status"), [("401", 200), ("403", 200), ("500", 401), ("500", 403)])
def test_refused_signature_is_a_non_retryable_auth_fault(c: str, status: int) -> None:
    adapter = aholo()
    body = {"c": c, "d": None, "m": "sign invalid", "f": ""}
    observations = observe(adapter, build(adapter, IDS), reply(body, status))
    faults = {fault_of(o) for o in observations}
    assert len(faults) == 1
    (fault,) = faults
    assert fault.kind is FaultKind.AUTH
    assert not fault.retryable
    assert fault.message == f"aholo API error (c={c}: sign invalid)"


def test_other_api_errors_fault_the_whole_batch_as_server() -> None:
    adapter = aholo()
    body = {"c": "100001", "d": None, "m": None, "f": ""}
    observations = observe(adapter, build(adapter, IDS), reply(body, 200, {"retry-after": "3"}))
    for observation in observations:
        fault = fault_of(observation)
        assert (fault.kind, fault.retryable, fault.retry_after_s) == (FaultKind.SERVER, True, 3.0)
        assert fault.message == "aholo API error (c=100001)"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"d": []}, "aholo reply: field 'c' is missing"),
        (
            {"c": "0", "d": "3FO4K4WBNNYV"},
            "aholo reply: field 'd' is a str, expected a list or null",
        ),
        ({"c": "0", "d": [{"taskId": IDS[0]}]}, "aholo reply: field 'd[0].status' is missing"),
        (
            {"c": "0", "d": [{"taskId": IDS[0], "status": "3"}]},
            "aholo reply: field 'd[0].status' is a str, expected an int",
        ),
        (
            {"c": "0", "d": [{"taskId": 7, "status": 3}]},
            "aholo reply: field 'd[0].taskId' is an int, expected a str",
        ),
        (
            {"c": "0", "d": [{"taskId": IDS[0], "status": 3, "result": {"plyPath": 1}}]},
            "aholo reply: field 'd[0].result.plyPath' is an int, expected a str or null",
        ),
        ({"c": None, "d": []}, "aholo reply: field 'c' is null, expected an int or a str"),
        ([{"taskId": IDS[0], "status": 3}], "aholo reply: body is a list, expected an object"),
    ],
)
def test_wrong_shapes_are_named_precisely(body: object, message: str) -> None:
    adapter = aholo()
    for observation in observe(adapter, build(adapter, IDS), reply(body)):
        fault = fault_of(observation)
        assert (fault.kind, fault.message) == (FaultKind.MALFORMED, message)


def test_unlisted_status_is_unknown_and_kept_raw() -> None:
    adapter = aholo()
    body = listing({"taskId": IDS[0], "status": 9})
    (observation,) = observe(adapter, build(adapter, IDS[:1]), reply(body))
    assert observation.state is State.UNKNOWN
    assert observation.upstream == {"status": 9}
    assert observation.message == "unrecognized upstream status 9"
