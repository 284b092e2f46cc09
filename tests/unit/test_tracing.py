"""gateway/tracing.py: nothing without the SDK enabled; spans with safe attributes when on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from gateway import tracing


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert tracing.configure(provider=provider)
    try:
        yield exporter
    finally:
        tracing.configure(env={})
        provider.shutdown()


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "TRUE"},
    ],
)
def test_off_unless_enabled(env: dict[str, str]) -> None:
    assert not tracing.configure(env=env)
    assert not tracing.enabled()
    with tracing.span("x", {"a": 1}) as span:
        span.set_attribute("b", 2)
    assert tracing.span("y") is tracing.OFF  # one shared object: nothing allocated per span
    headers: dict[str, str] = {}
    tracing.inject(headers)
    assert headers == {}


def test_an_exporter_variable_turns_it_on() -> None:
    try:
        assert tracing.configure(env={"OTEL_TRACES_EXPORTER": "console"})
        assert tracing.enabled()
    finally:
        tracing.configure(env={})
    assert not tracing.enabled()


def test_an_exporter_that_is_not_installed_leaves_it_off() -> None:
    # opentelemetry-exporter-otlp-proto-http is not a dependency of the tests.
    assert not tracing.configure(env={"OTEL_TRACES_EXPORTER": "otlp"})


def test_spans_nest_and_carry_their_attributes(spans: InMemorySpanExporter) -> None:
    with tracing.span("outer", {"pollcast.provider": "ailab"}) as outer:
        outer.set_attribute("pollcast.requests", 2)
        with tracing.span("inner", {"pollcast.batch_size": 3}):
            pass
    inner_span, outer_span = spans.get_finished_spans()
    assert outer_span.name == "outer"
    assert dict(outer_span.attributes or {}) == {
        "pollcast.provider": "ailab",
        "pollcast.requests": 2,
    }
    assert inner_span.parent is not None
    assert inner_span.parent.span_id == outer_span.context.span_id


def test_a_failure_records_the_type_never_the_message(spans: InMemorySpanExporter) -> None:
    secret = "https://user:hunter2@upstream.example/path?sig=abc"
    with pytest.raises(ValueError), tracing.span("failing"):
        raise ValueError(secret)
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError"
    assert dict(span.attributes or {}) == {"error.type": "ValueError"}
    assert span.events == ()  # no exception event with the message
    assert "hunter2" not in repr(span.to_json())


def test_inject_writes_the_current_span_as_a_w3c_traceparent(
    spans: InMemorySpanExporter,
) -> None:
    headers: dict[str, str] = {}
    with tracing.span("attempt"):
        tracing.inject(headers)
    (span,) = spans.get_finished_spans()
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & 0x01  # sampled
    assert int(trace_id, 16) == span.context.trace_id
    assert int(span_id, 16) == span.context.span_id
