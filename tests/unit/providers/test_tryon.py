"""tryon adapter against docs/providers/tryon.md."""

from __future__ import annotations

import ast
import json

import msgspec
import pytest

from gateway.core.model import ErrorInfo, FaultKind, Observation, Result, State
from gateway.exceptions import InvalidTaskKey
from gateway.providers.tryon import TryonAdapter
from tests.unit.providers.support import (
    OSS_BASE,
    TRYON_KEY,
    TRYON_OPEN_ID,
    build,
    fault_of,
    observe_one,
    tryon,
)

# The doc's examples are Python dict literals ("4 Respond", and the same replies
# quoted inside its polling loop), kept verbatim and converted to JSON by ast.
SUCCESS_RESPOND = """{'code': 200, 'msg': 'ok', 'data': {'bmi': 0.000402367, 'body_url': '', 
'cost': 5.0, 'hairOcclued': 0, 'height': 0.0, 'id': 3619, 'imgUrl1': '', 
'imgUrl2': '', 'imgUrl3': '', 'infInfo': '', 'infInfoEn': '', 'ipId': '', 'isApi': 1, 
'modelBmi': 0.0, 'openId': 'ovB-x63dKsdfu8', 'position': 0, 
'shareUser': -1, 'showUrl': '', 'state': 1, 'tempId': 208, 'useInfId': -1, 
'weight': 0.0}}"""

FAILED_RESPOND = """{'code': 200, 'msg': 'ok', 'data': {'bmi': 0.000402367, 'body_url': '', 'cost': 5.0, 'hairOcclued': 0, 'height': 0.0, 'id': 3653, 'imgUrl1': '', 'imgUrl2': '', 'imgUrl3': '', 'infInfo': '没有检测到脸部,请上传正确的人体试衣照片', 'infInfoEn': 'No face was detected. Please upload the correct human fitting photo.', 'ipId': '', 'isApi': 1, 'modelBmi': 0.0, 'openId': 'ovB-x639B8QwdfF7kQYS9QKdK6u8', 'position': 0, 'shareUser': -1,'showUrl': '', 'state': -1, 'tempId': 208, 'useInfId': -1, 'weight': 0.0}}"""  # noqa: E501

SUCCESS_IN_LOOP = """{'code': 200, 'msg': 'ok', 'data': {'bmi': 0.000402367, 'body_url': '', 
                    'cost': 5.0, 'hairOcclued': 0, 'height': 0.0, 'id': 3619, 'imgUrl1': '', 
                    'imgUrl2': '', 'imgUrl3': '', 'infInfo': '', 'infInfoEn': '', 'ipId': '', 'isApi': 1, 
                    'modelBmi': 0.0, 'openId': 'ovB-x66u8', 'position': 0, 
                    'shareUser': -1, 'showUrl': '', 'state': 1, 'tempId': 208, 'useInfId': -1, 
                    'weight': 0.0}}"""  # noqa: E501

FAILED_IN_LOOP = """{'code': 200, 'msg': 'ok', 'data': {'bmi': 0.000402367, 'body_url': '', 
                        'cost': 5.0, 'hairOcclued': 0, 'height': 0.0, 'id': 3653, 'imgUrl1': '', 
                        'imgUrl2': '', 'imgUrl3': '', 
                        'infInfo': '没有检测到脸部,请上传正确的人体试衣照片', 
                        'infInfoEn': 'No face was detected. Please upload the correct human fitting photo.', 
                        'ipId': '', 'isApi': 1, 'modelBmi': 0.0, 
                        'openId': 'ovB-x63dKsdfu8', 'position': 0, 'shareUser': -1,
                         'showUrl': '', 'state': -1, 'tempId': 208, 'useInfId': -1, 'weight': 0.0}}"""  # noqa: E501


def as_json(python_literal: str) -> str:
    return json.dumps(ast.literal_eval(python_literal), ensure_ascii=False)


def data(**fields: object) -> dict[str, object]:
    return {"code": 200, "msg": "ok", "data": {"openId": TRYON_OPEN_ID, "position": 0, **fields}}


def assert_account_fields_dropped(observation: Observation) -> None:
    encoded = msgspec.json.encode(observation)
    for account_value in (b"ovB-x6", b"3619", b"3653", b"0.000402367", b"tempId"):
        assert account_value not in encoded


def test_request_posts_credentials_and_integer_inf_id() -> None:
    request = build(tryon(), ["2880"])
    assert request.method == "POST"
    assert request.url == "https://tryon.example.com/api/inf/get_result"
    assert request.body is not None
    body = json.loads(request.body)
    assert body == {"openId": TRYON_OPEN_ID, "apiKey": TRYON_KEY, "infId": 2880}
    assert isinstance(body["infId"], int)  # the doc: "infId long"


@pytest.mark.parametrize(
    "task_id", ["abc", "12a", "-5", "1.5", "٣", "²", "1" * 20, "9223372036854775808"]
)
def test_task_ids_must_be_64_bit_integers(task_id: str) -> None:
    with pytest.raises(InvalidTaskKey, match="tryon task id") as caught:
        tryon().check_task_id(task_id)
    assert caught.value.field == "task_id"
    with pytest.raises(InvalidTaskKey):
        build(tryon(), [task_id])


@pytest.mark.parametrize("task_id", ["0", "2880", "9223372036854775807"])
def test_integer_ids_are_accepted_and_sent_as_json_integers(task_id: str) -> None:
    adapter = tryon()
    adapter.check_task_id(task_id)  # raises InvalidTaskKey for anything else
    request = build(adapter, [task_id])
    assert request.body is not None
    sent = json.loads(request.body)["infId"]
    assert type(sent) is int and sent == int(task_id)


def test_invalid_id_message() -> None:
    with pytest.raises(InvalidTaskKey, match=r"^tryon task ids are integers \(infId\)$"):
        tryon().check_task_id("abc")


def test_defaults_respect_the_cost_and_the_firewall() -> None:
    defaults = TryonAdapter.defaults
    assert (defaults.interval_s, defaults.max_interval_s) == (60.0, 300.0)  # time.sleep(60)
    assert defaults.cost_per_call == 0.1  # "each call will consume 0.1 coins"
    assert defaults.typical_duration_s == (90.0, 600.0)
    assert defaults.rate_per_s <= 2.0 and defaults.concurrency <= 2


@pytest.mark.parametrize("example", [SUCCESS_RESPOND, SUCCESS_IN_LOOP])
def test_doc_success_example_is_running_at_position_zero(example: str) -> None:
    observation = observe_one(tryon(), as_json(example))
    assert observation.state is State.RUNNING
    assert observation.position is None
    assert observation.upstream == {"state": 1, "position": 0}
    assert_account_fields_dropped(observation)


@pytest.mark.parametrize("example", [FAILED_RESPOND, FAILED_IN_LOOP])
def test_doc_failed_example(example: str) -> None:
    observation = observe_one(tryon(), as_json(example))
    assert observation.state is State.FAILED
    assert observation.error == ErrorInfo(
        "upstream_failed", "No face was detected. Please upload the correct human fitting photo."
    )
    assert observation.upstream == {"state": -1, "position": 0}
    assert_account_fields_dropped(observation)


def test_failure_falls_back_to_the_chinese_message() -> None:
    observation = observe_one(tryon(), data(state=-1, infInfo="没有检测到脸部", infInfoEn=""))
    assert observation.error == ErrorInfo("upstream_failed", "没有检测到脸部")


def test_queued_with_position() -> None:
    observation = observe_one(tryon(), data(state=1, position=3))
    assert (observation.state, observation.position) == (State.QUEUED, 3)
    assert observation.upstream == {"state": 1, "position": 3}


def test_done_resolves_result_paths_against_oss_base() -> None:
    body = data(state=2, showUrl="out/3619.jpg", body_url="pose/3619.png")
    observation = observe_one(tryon(), body)
    assert observation.state is State.SUCCEEDED
    show, pose = OSS_BASE + "out/3619.jpg", OSS_BASE + "pose/3619.png"
    assert observation.result == Result(urls=(show, pose), files={"show": show, "body": pose})
    assert observation.upstream == {"state": 2, "position": 0}
    empty_body = observe_one(tryon(), data(state=2, showUrl="out/1.jpg", body_url=""))
    assert empty_body.result is not None
    assert empty_body.result.files == {"show": OSS_BASE + "out/1.jpg"}


def test_not_enough_coins() -> None:
    observation = observe_one(tryon(), data(state=-2))
    assert observation.state is State.FAILED
    assert observation.error == ErrorInfo("insufficient_balance", "not enough coins")


def test_code_404_is_an_unknown_task() -> None:
    observation = observe_one(tryon(), {"code": 404, "msg": "not found", "data": None})
    assert observation.fault is None
    assert observation.state is State.UNKNOWN
    assert observation.error == ErrorInfo("not_found", "upstream does not know this task id")


@pytest.mark.parametrize("code", [401, 403])
def test_refused_credentials_are_a_non_retryable_auth_fault(code: int) -> None:
    fault = fault_of(observe_one(tryon(), {"code": code, "msg": "apiKey error"}))
    assert (fault.kind, fault.retryable) == (FaultKind.AUTH, False)
    assert fault.message == f"tryon API error (code {code}: apiKey error)"


def test_other_codes_are_server_faults() -> None:
    fault = fault_of(observe_one(tryon(), {"code": 500, "msg": "busy"}, status=200))
    assert (fault.kind, fault.message) == (FaultKind.SERVER, "tryon API error (code 500: busy)")


def test_an_echoed_open_id_is_scrubbed() -> None:
    fault = fault_of(observe_one(tryon(), {"code": 401, "msg": f"openId {TRYON_OPEN_ID} unknown"}))
    assert fault.message == "tryon API error (code 401: openId [redacted] unknown)"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"code": 200, "msg": "ok"},
            "tryon reply: field 'data' is missing or null although code is 200",
        ),
        ({"msg": "ok", "data": {"state": 1}}, "tryon reply: field 'code' is missing"),
        (
            {"code": "200", "data": {"state": 1}},
            "tryon reply: field 'code' is a str, expected an int",
        ),
        ({"code": 200, "data": {"position": 0}}, "tryon reply: field 'data.state' is missing"),
        (
            {"code": 200, "data": []},
            "tryon reply: field 'data' is a list, expected an object or null",
        ),
        (
            {"code": 200, "data": {"state": 1, "position": "2"}},
            "tryon reply: field 'data.position' is a str, expected an int or null",
        ),
    ],
)
def test_wrong_shapes_are_named_precisely(body: object, message: str) -> None:
    fault = fault_of(observe_one(tryon(), body))
    assert (fault.kind, fault.message) == (FaultKind.MALFORMED, message)


def test_unlisted_state_is_unknown_and_kept_raw() -> None:
    observation = observe_one(tryon(), data(state=0, position=0))
    assert observation.state is State.UNKNOWN
    assert observation.upstream == {"state": 0, "position": 0}
    assert observation.message == "unrecognized upstream status 0"
