"""parse() never raises and always answers every requested id, whatever comes back."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.model import FaultKind, State
from gateway.providers.base import UpstreamResponse
from tests.unit.providers.support import CASES, build, observe

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def shaped(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects shaped like the doc's: mostly every field plausible, else any subset of anything."""
    plausible = st.fixed_dictionaries(fields)
    anything = st.fixed_dictionaries({}, optional={k: v | json_values for k, v in fields.items()})
    return st.one_of(plausible, plausible, plausible, anything)


def one_of_ids(kind: str) -> st.SearchStrategy[str]:
    return st.sampled_from(CASES[kind][1]) | st.text(max_size=6)


urls = st.text(max_size=20)
error_detail = shaped(code=st.text(max_size=8), message=st.text(max_size=8))

ENVELOPES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "ailab": shaped(
        error_code=st.sampled_from([0, 0, 400, 401, 403, 429, 500, -1]),
        error_msg=st.text(max_size=10),
        error_detail=error_detail,
        task_status=st.integers(-2, 3),
        result=st.lists(urls, max_size=3),
    ),
    "aholo": shaped(
        c=st.sampled_from(["0", "0", "401", "500", 0]),
        d=st.lists(
            shaped(
                taskId=one_of_ids("aholo"),
                status=st.integers(-1, 9),
                result=shaped(plyPath=urls, spzPath=urls, sogPath=urls),
            ),
            max_size=5,
        ),
        m=st.text(max_size=8),
    ),
    "tryon": shaped(
        code=st.sampled_from([200, 200, 401, 404, 500]),
        msg=st.text(max_size=8),
        data=shaped(
            state=st.integers(-3, 3),
            position=st.integers(-1, 5),
            showUrl=urls,
            body_url=urls,
            infInfo=st.text(max_size=8),
            infInfoEn=st.text(max_size=8),
        ),
    ),
    "genpic": shaped(
        RetCode=st.sampled_from([0, 0, 171, 172, 230]),
        Message=st.text(max_size=8),
        TaskDetailList=st.lists(
            shaped(
                TaskUid=one_of_ids("genpic"),
                TaskStatus=st.sampled_from(["Queuing", "Running", "Finished", "Error", "Odd"]),
                FinalPictureUrls=st.lists(urls, max_size=2),
                TaskErrorMsg=st.text(max_size=8),
                TaskErrorCode=st.integers(-1, 500),
            ),
            max_size=4,
        ),
    ),
    "videoproc": shaped(
        status=st.sampled_from(["processing", "completed", "error", "queued"]),
        progress=st.integers(-10, 110) | st.floats(-1e300, 1e300),
        message=st.text(max_size=8),
        files=st.dictionaries(st.text(max_size=5), urls, max_size=3),
        video_info=st.dictionaries(st.text(max_size=5), json_values, max_size=2),
        error=st.text(max_size=8),
    ),
}


def bodies(kind: str) -> st.SearchStrategy[bytes]:
    as_json = st.one_of(ENVELOPES[kind], json_values).map(
        lambda value: json.dumps(value, ensure_ascii=False).encode()
    )
    return st.one_of(st.binary(max_size=200), as_json, as_json)


statuses = st.sampled_from([200, 400, 401, 403, 404, 429, 500, 503]) | st.integers(100, 599)
statuses = st.just(200) | statuses
headers = st.fixed_dictionaries(
    {}, optional={"retry-after": st.sampled_from(["5", "-1", "soon", "1.5"]) | st.text(max_size=6)}
)


def check(kind: str, body: bytes, status: int, response_headers: dict[str, str]) -> None:
    adapter = CASES[kind][0]()
    request = build(adapter, CASES[kind][1])
    response = UpstreamResponse(status_code=status, headers=response_headers, body=body)
    observations = observe(adapter, request, response)  # ids, order, no secret
    for observation in observations:
        fault = observation.fault
        if fault is not None:
            assert observation.state is State.UNKNOWN
            # Every reply shape is handled on purpose, never by the last-resort net.
            assert "could not be interpreted" not in fault.message
            if fault.kind is FaultKind.MALFORMED:
                assert fault.message.startswith(f"{kind} reply: ")
        msgspec.json.encode(observation)


@pytest.mark.parametrize("kind", sorted(CASES))
@settings(max_examples=200, deadline=None, database=None)
@given(data=st.data())
def test_parse_never_raises_and_answers_every_id(kind: str, data: st.DataObject) -> None:
    body = data.draw(bodies(kind), label="body")
    status = data.draw(statuses, label="status")
    response_headers = data.draw(headers, label="headers")
    check(kind, body, status, response_headers)
