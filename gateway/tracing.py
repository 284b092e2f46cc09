"""OpenTelemetry traces, or nothing at all.

Spans are recorded only when the SDK is installed (``pip install
'pollcast[otel]'``) **and** enabled with the standard variables: an
``OTEL_TRACES_EXPORTER`` other than ``none`` (``console`` is in the SDK;
``otlp`` also needs ``opentelemetry-exporter-otlp-proto-http``), and
``OTEL_SDK_DISABLED`` not ``true``. ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES`` and the exporter's own ``OTEL_EXPORTER_OTLP_*``
variables are read by the SDK as usual. Otherwise :func:`span` hands back
one shared do-nothing object, so the poller's hot path pays one attribute
read and one call per span.

The spans (names and attributes are the whole contract; they never carry a
credential, a URL or an upstream's message, only names, counts and kinds):

* ``pollcast.poll_round`` — ``pollcast.provider``, ``pollcast.tasks``, ``pollcast.requests``
* ``pollcast.upstream_request`` — ``pollcast.provider``, ``pollcast.batch_size``,
  ``pollcast.outcome`` (``ok`` or the fault kind)
* ``pollcast.commit`` — ``pollcast.provider``, ``pollcast.events``, ``pollcast.stored``
* ``pollcast.webhook_attempt`` — ``pollcast.webhook.id``, ``pollcast.outcome``
  (the HTTP status, or the failure's type); the request carries the span's
  W3C ``traceparent`` (https://www.w3.org/TR/trace-context/).

A span that ends with an exception gets status ERROR and ``error.type``
(the exception's class name): exception messages are not recorded, since
a library's message may quote a URL.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from types import TracebackType
from typing import Any, Protocol

__all__ = ["SpanLike", "configure", "enabled", "inject", "span"]

log = logging.getLogger("pollcast.tracing")

Attribute = str | bool | int | float


class SpanLike(Protocol):
    def set_attribute(self, key: str, value: Attribute) -> Any: ...


class SpanContext(Protocol):
    def __enter__(self) -> SpanLike: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any: ...


class _Off:
    """The span when tracing is off: enters, records and exits doing nothing."""

    __slots__ = ()

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def set_attribute(self, key: str, value: Attribute) -> None:
        return None


OFF = _Off()


class _On:
    """A live span: ERROR and the exception's type on failure, never its message."""

    __slots__ = ("_cm", "_span")

    def __init__(self, cm: Any) -> None:
        self._cm = cm
        self._span: Any = None

    def __enter__(self) -> SpanLike:
        self._span = self._cm.__enter__()
        return self._span  # type: ignore[no-any-return]

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        if kind is not None and self._span is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_attribute("error.type", kind.__name__)
            self._span.set_status(Status(StatusCode.ERROR, kind.__name__))
        return self._cm.__exit__(kind, exc, tb)


_tracer: Any = None  # an opentelemetry Tracer while tracing is on
_propagator: Any = None


def enabled() -> bool:
    return _tracer is not None


def configure(env: Mapping[str, str] | None = None, *, provider: Any = None) -> bool:
    """Decide whether spans are recorded; returns whether they are.

    Args:
        env: the variables to read (default: the process environment).
        provider: an SDK ``TracerProvider`` to use as is (tests: one with an
            in-memory exporter); without it, one is built from ``env``.
    """
    global _tracer, _propagator
    _tracer = _propagator = None
    env = os.environ if env is None else env
    if provider is None:
        provider = _provider_from(env)
    if provider is None:
        return False
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _tracer = provider.get_tracer("pollcast")
    _propagator = TraceContextTextMapPropagator()
    return True


def _provider_from(env: Mapping[str, str]) -> Any:
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if not exporter_name or exporter_name == "none":
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning(
            "OTEL_TRACES_EXPORTER is set but the OpenTelemetry SDK is not installed "
            "(pip install 'pollcast[otel]'); no traces"
        )
        return None
    exporters: list[Any] = []
    for name in (part.strip() for part in exporter_name.split(",")):
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                    OTLPSpanExporter,
                )
            except ImportError:
                log.warning(
                    "OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http; "
                    "no OTLP export"
                )
                continue
            exporters.append(OTLPSpanExporter())
        elif name != "none":
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored", name)
    if not exporters:
        return None
    provider = TracerProvider(resource=Resource.create())
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def span(name: str, attributes: Mapping[str, Attribute] | None = None) -> SpanContext:
    """A span around a ``with`` block (the current span becomes its parent)."""
    tracer = _tracer
    if tracer is None:
        return OFF
    return _On(
        tracer.start_as_current_span(
            name,
            attributes=dict(attributes or {}),
            record_exception=False,
            set_status_on_exception=False,
        )
    )


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's W3C ``traceparent`` (and ``tracestate``) to ``headers``."""
    if _propagator is not None:
        _propagator.inject(headers)


configure()
