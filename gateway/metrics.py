"""Prometheus metrics, one registry per gateway (so several can share a process).

Labels never carry a task id, a URL or a credential: only provider names,
outcomes, transports and states — a bounded set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.hub.queue import QueueStats

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.upstream_requests = Counter(
            "pollcast_upstream_requests",
            "Upstream status requests, by provider and outcome (ok or the fault kind).",
            ["provider", "outcome"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "pollcast_upstream_latency_seconds",
            "Time to an upstream's answer (or failure).",
            ["provider"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.polls_saved = Counter(
            "pollcast_polls_saved",
            "Upstream polls avoided: subscribers beyond the first, and ids sharing a batch.",
            ["provider"],
            registry=r,
        )
        self.tasks = Gauge(
            "pollcast_tasks",
            "Tasks this node knows, by provider and state.",
            ["provider", "state"],
            registry=r,
        )
        self.subscribers = Gauge(
            "pollcast_subscribers",
            "Open subscriber streams, by transport.",
            ["transport"],
            registry=r,
        )
        self.events_published = Counter(
            "pollcast_events_published",
            "State and progress events committed by this node.",
            registry=r,
        )
        self.notices = Counter(
            "pollcast_notices",
            "Notices sent, by code.",
            ["code"],
            registry=r,
        )
        self.budget_spent = Counter(
            "pollcast_budget_spent",
            "Cost of paid upstream calls (e.g. tryon coins), counted as each is sent.",
            ["provider"],
            registry=r,
        )
        self.limits_fallbacks = Counter(
            "pollcast_limits_fallbacks",
            "Calls decided without the cluster's shared limits (Redis unreachable): "
            "this node took only its share.",
            ["provider"],
            registry=r,
        )
        self.backend_errors = Counter(
            "pollcast_backend_errors",
            "Failed calls to the state backend (SQLite or Redis).",
            registry=r,
        )
        self.commits_refused = Counter(
            "pollcast_commits_refused",
            "Events not stored: the claim they came from had lapsed and another node took it.",
            registry=r,
        )
        self.webhook_claims_lost = Counter(
            "pollcast_webhook_claims_lost",
            "Webhook outcomes not recorded: the delivery's lease ran out and it was claimed again.",
            registry=r,
        )
        self.loop_failures = Counter(
            "pollcast_loop_failures",
            "Failures of the poller's long-running loops (each retried with backoff), by loop "
            "(lane:<provider>, housekeeping).",
            ["loop"],
            registry=r,
        )
        self.http_path = Gauge(
            "pollcast_http_path",
            "1 for the HTTP path this node runs on: fast (uvicorn internals, direct "
            "writes) or plain (uvicorn's standard protocol, writes via ASGI send).",
            ["path"],
            registry=r,
        )
        self._states: dict[str, tuple[str, str]] = {}  # task → (provider, state)

    def task_state(self, task: str, state: str | None) -> None:
        """Track the last state of each task this node committed (``None``: forgotten)."""
        old = self._states.get(task)
        if old is not None and old[1] == state:
            return  # a progress event: the gauge stays as it is
        self._states.pop(task, None)
        if old is not None:
            self.tasks.labels(*old).dec()
        if state is not None:
            now = (task.partition(":")[0], state)
            self._states[task] = now
            self.tasks.labels(*now).inc()

    def serving_on(self, path: str) -> None:
        """Which HTTP path is active (``fast`` or ``plain``)."""
        for name in ("fast", "plain"):
            self.http_path.labels(name).set(1 if name == path else 0)

    def watch_queues(self, stats: QueueStats) -> None:
        """Expose the subscriber queues' plain counters at scrape time."""
        self.registry.register(_QueueCollector(stats))

    def watch_takeovers(self, takeovers: dict[str, int]) -> None:
        self.registry.register(_TakeoverCollector(takeovers))

    def watch_channels(self, received: Callable[[], int], subscribed: Callable[[], int]) -> None:
        """Cluster: the events this node's listener received, and the tasks it listens to."""
        self.registry.register(_ChannelCollector(received, subscribed))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _QueueCollector(Collector):
    def __init__(self, stats: QueueStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield CounterMetricFamily(
            "pollcast_events_delivered",
            "Events handed to subscriber queues on this node.",
            value=s.delivered,
        )
        yield CounterMetricFamily(
            "pollcast_events_coalesced",
            "Progress events dropped from a slow subscriber's full queue (a newer one stays).",
            value=s.coalesced,
        )
        yield CounterMetricFamily(
            "pollcast_queue_overflows",
            "Subscriber streams closed for falling too far behind (they resume by seq).",
            value=s.overflows,
        )
        yield CounterMetricFamily(
            "pollcast_direct_write_failures",
            "Streams dropped because writing an event straight to their connection raised "
            "(they resume by seq).",
            value=s.direct_failures,
        )


class _ChannelCollector(Collector):
    def __init__(self, received: Callable[[], int], subscribed: Callable[[], int]) -> None:
        self.received = received
        self.subscribed = subscribed

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "pollcast_events_received",
            "Cluster: events this node received from Redis (only its subscribed tasks').",
            value=self.received(),
        )
        yield GaugeMetricFamily(
            "pollcast_subscribed_tasks",
            "Cluster: tasks whose event channel this node is subscribed to.",
            value=self.subscribed(),
        )


class _TakeoverCollector(Collector):
    def __init__(self, takeovers: dict[str, int]) -> None:
        self.takeovers = takeovers

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "pollcast_claim_takeovers",
            "Cluster: claims taken back from a node whose lease ran out.",
            labels=["provider"],
        )
        for provider, n in self.takeovers.items():
            family.add_metric([provider], n)
        yield family
