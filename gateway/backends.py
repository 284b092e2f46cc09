"""Where the gateway's state lives, chosen once from ``[backend]``.

``kind = "local"``: an in-process hub written through to SQLite, the
in-process schedule, per-node limits and, with webhooks on, an SQLite outbox
in the same file. ``kind = "redis"``: one Redis client shared by the hub, the
schedule (claims with leases), the cluster-wide limits and the Redis outbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import Config
from gateway.hub.base import Hub
from gateway.hub.client import Client, connect
from gateway.hub.local import LocalHub
from gateway.hub.redis import RedisHub
from gateway.metrics import Metrics
from gateway.poller.limits import Limits, RedisLimits
from gateway.poller.provider import ProviderRuntime
from gateway.poller.redis_schedule import RedisSchedule
from gateway.poller.schedule import Schedule
from gateway.webhooks.outbox import Outbox
from gateway.webhooks.service import outbox_for

__all__ = ["Backends", "build_backends"]


@dataclass(frozen=True, slots=True)
class Backends:
    """The state backends of one gateway node."""

    hub: Hub
    # ``None``: the poller's in-process schedule.
    schedule: Schedule | None = None
    # Per provider; a provider not listed gets the poller's per-node limits.
    limits: dict[str, Limits] = field(default_factory=dict)
    # The client the Redis parts share, for the gateway to close.
    redis: Client | None = None
    # How long a lane sleeps without news (a shared schedule is re-read this often).
    tick_s: float = 1.0
    # Where webhook deliveries wait; ``None`` when webhooks are off.
    outbox: Outbox | None = None


def build_backends(
    config: Config,
    *,
    runtimes: Mapping[str, ProviderRuntime],
    node_id: str,
    metrics: Metrics,
    hub: Hub | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Backends:
    """The hub, schedule, limits and outbox that ``config.backend`` selects.

    A ``hub`` passed in is used as it is (and no other backend is built for
    it): the schedule and limits stay in-process.
    """
    backend = config.backend
    schedule: Schedule | None = None
    limits: dict[str, Limits] = {}
    client: Client | None = None
    tick_s = 1.0
    if hub is None and backend.kind == "redis":
        client = connect(
            backend.url, max_connections=backend.max_connections, cluster=backend.cluster
        )
        hub = RedisHub(
            client, prefix=backend.prefix, history_limit=backend.history_limit, clock=clock
        )
        schedule = RedisSchedule(
            client,
            prefix=backend.prefix,
            lease_s=backend.lease_s,
            node_id=node_id,
            shards=backend.schedule_shards,
            clock=clock.wall,
        )
        # Rate, budget and concurrency hold for the cluster, not per node.
        limits = {
            name: RedisLimits(client, rt, prefix=backend.prefix, node_id=node_id, metrics=metrics)
            for name, rt in runtimes.items()
        }
        tick_s = 0.25  # other nodes add tasks: look at the shared schedule this often
    hub = hub or LocalHub(
        backend.path,
        history_limit=backend.history_limit,
        snapshot_cache=backend.snapshot_cache,
    )
    # Deliveries live where the hub's state does: the same SQLite file or Redis.
    outbox = (
        outbox_for(
            backend.kind,
            path=backend.path,
            url=backend.url,
            prefix=backend.prefix,
            max_connections=backend.max_connections,
            cluster=backend.cluster,
        )
        if config.webhooks.secret
        else None
    )
    return Backends(
        hub=hub, schedule=schedule, limits=limits, redis=client, tick_s=tick_s, outbox=outbox
    )
