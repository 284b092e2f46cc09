"""The shared reply machinery (gateway/providers/_reply.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
import pytest

from gateway.core.model import ErrorInfo, Fault, FaultKind, Observation, State
from gateway.providers._reply import (
    MalformedReply,
    ReplyAdapter,
    decode_reply,
    observe_listed,
    only_task_id,
    resolve_url,
)
from gateway.providers.base import (
    ProviderDefaults,
    UpstreamRequest,
    UpstreamResponse,
)
from tests.unit.providers.support import reply


class _Settings(msgspec.Struct, frozen=True):
    base_url: str
    token: str


class _ScriptedAdapter(ReplyAdapter):
    """Answers whatever ``outcome`` says, to exercise ReplyAdapter.parse alone."""

    kind = "scripted"
    Settings = _Settings
    defaults = ProviderDefaults(interval_s=1.0, max_interval_s=2.0, batch_size=10)

    def __init__(self, outcome: Fault | Mapping[str, Observation] | Exception) -> None:
        super().__init__(_Settings(base_url="https://x.example.com//", token="tok-9Z"))
        self.outcome = outcome

    def build_request(
        self, task_ids: Sequence[str], *, now_ms: int, request_id: str
    ) -> UpstreamRequest:
        return UpstreamRequest("GET", self.root, tuple(task_ids))

    def secret_values(self) -> tuple[str, ...]:
        return ("tok-9Z", "")

    def read(
        self, request: UpstreamRequest, response: UpstreamResponse
    ) -> Fault | Mapping[str, Observation]:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def parse(adapter: _ScriptedAdapter, *task_ids: str) -> list[Observation]:
    request = adapter.build_request(task_ids, now_ms=0, request_id="r")
    return adapter.parse(request, reply(b"{}"))


def test_root_strips_trailing_slashes() -> None:
    assert _ScriptedAdapter({}).root == "https://x.example.com"


def test_unexpected_exceptions_become_malformed_faults_without_their_text() -> None:
    adapter = _ScriptedAdapter(ZeroDivisionError("body said tok-9Z"))
    observations = parse(adapter, "a", "b")
    assert [o.task_id for o in observations] == ["a", "b"]
    for observation in observations:
        assert observation.fault == Fault(
            FaultKind.MALFORMED, "scripted reply could not be interpreted (ZeroDivisionError)"
        )


def test_malformed_reply_is_prefixed_with_the_kind() -> None:
    (observation,) = parse(_ScriptedAdapter(MalformedReply("field 'x' is missing")), "a")
    assert observation.fault == Fault(FaultKind.MALFORMED, "scripted reply: field 'x' is missing")


def test_ids_the_reply_omits_are_not_visible_yet_and_order_is_the_requests() -> None:
    seen = {"b": Observation("b", State.RUNNING)}
    first, second = parse(_ScriptedAdapter(seen), "a", "b")
    assert first == Observation("a", State.UNKNOWN, message="not visible upstream yet")
    assert second is seen["b"]


def test_secrets_are_scrubbed_from_fault_message_and_error_texts() -> None:
    fault = Fault(FaultKind.SERVER, "upstream says tok-9Z is throttled")
    (observation,) = parse(_ScriptedAdapter(fault), "a")
    assert observation.fault == Fault(FaultKind.SERVER, "upstream says [redacted] is throttled")
    text = Observation("a", State.FAILED, message="m tok-9Z", error=ErrorInfo("tok-9Z", "e tok-9Z"))
    (observation,) = parse(_ScriptedAdapter({"a": text}), "a")
    assert observation.message == "m [redacted]"
    assert observation.error == ErrorInfo("[redacted]", "e [redacted]")


def test_clean_observations_pass_through_untouched() -> None:
    clean = Observation("a", State.FAILED, message="m", error=ErrorInfo("c", "e"))
    (observation,) = parse(_ScriptedAdapter({"a": clean}), "a")
    assert observation is clean


class _Shape(msgspec.Struct):
    n: int
    items: list[str] | None = None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"n": "1"}', "field 'n' is a str, expected an int"),
        (b'{"n": 1, "items": [1]}', "field 'items[0]' is an int, expected a str"),
        (b"{}", "field 'n' is missing"),
        (b"[1]", "body is a list, expected an object"),
        (b'{"n": 1e999}', "field 'n': number out of range"),
    ],
)
def test_decode_reply_rephrases_validation_errors(body: bytes, message: str) -> None:
    with pytest.raises(MalformedReply) as caught:
        decode_reply(body, _Shape)
    assert str(caught.value) == message


def test_decode_reply_returns_the_typed_value() -> None:
    assert decode_reply(b' {"n": 2, "extra": {"ignored": true}}', _Shape) == _Shape(n=2)


def test_observe_listed_keeps_first_report_of_requested_ids_only() -> None:
    items = [("x", 1), ("a", 2), ("a", 3), ("b", 4)]
    observed = observe_listed(
        ["a", "b"], items, lambda item: item[0], lambda item: Observation(item[0], progress=item[1])
    )
    assert observed == {"a": Observation("a", progress=2), "b": Observation("b", progress=4)}


def test_only_task_id() -> None:
    assert only_task_id(["a"], "k") == "a"
    for ids in ([], ["a", "b"]):
        with pytest.raises(ValueError, match="k queries exactly one task per request"):
            only_task_id(ids, "k")


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("/api/download/v.mp4", "https://h.example.com/p/api/download/v.mp4"),
        ("api/download/v.mp4", "https://h.example.com/p/api/download/v.mp4"),
        ("https://cdn.example.com/v.mp4", "https://cdn.example.com/v.mp4"),
    ],
)
def test_resolve_url(path: str, url: str) -> None:
    assert resolve_url("https://h.example.com/p", path) == url
