"""WatcherBoard: which subscriber counts a node publishes, when (an injected clock)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from gateway.hub.local import LocalHub
from gateway.hub.queue import SubscriberQueue
from gateway.listing import WatcherBoard


class RecordingHub(LocalHub):
    """A local hub that keeps what it was asked to publish."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.sent: list[dict[str, int]] = []

    async def publish_watchers(self, node: str, counts: Mapping[str, int], ttl_s: float) -> None:
        assert node == "n1" and ttl_s == 30.0
        self.sent.append(dict(counts))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_changes_go_out_at_once_and_everything_on_each_heartbeat() -> None:
    hub, clock = RecordingHub(), Clock()
    board = WatcherBoard(hub, "n1", heartbeat_s=10.0, ttl_s=30.0, clock=clock)
    a, b = SubscriberQueue(), SubscriberQueue()
    hub.attach(a, ["x:1", "x:2"])
    await board.step()  # the first step is a heartbeat
    assert hub.sent == [{"x:1": 1, "x:2": 1}]

    clock.now += 1
    await board.step()  # nothing changed: nothing sent
    assert len(hub.sent) == 1

    hub.attach(b, ["x:1"])
    clock.now += 1
    await board.step()
    assert hub.sent[-1] == {"x:1": 2}  # only the change

    hub.detach(a, ["x:1", "x:2"])
    clock.now += 1
    await board.step()
    assert hub.sent[-1] == {"x:1": 1, "x:2": 0}  # 0 withdraws a task that lost them all

    clock.now = 110.0  # 10 s after the first heartbeat: every count is renewed
    await board.step()
    assert hub.sent[-1] == {"x:1": 1}
    assert board.published == {"x:1": 1}

    await board.withdraw()
    assert hub.sent[-1] == {"x:1": 0} and board.published == {}


async def test_a_step_that_fails_unexpectedly_does_not_end_the_board() -> None:
    """Any failure of a step (a driver may leak an ``AttributeError``) is logged and
    the next step retries; the board never stops publishing."""

    class FlakyHub(RecordingHub):
        fail = 1

        async def publish_watchers(
            self, node: str, counts: Mapping[str, int], ttl_s: float
        ) -> None:
            if self.fail:
                self.fail -= 1
                raise AttributeError("'NoneType' object has no attribute 'writelines'")
            await super().publish_watchers(node, counts, ttl_s)

    hub = FlakyHub()
    board = WatcherBoard(hub, "n1", heartbeat_s=10.0, ttl_s=30.0, every_s=0.001, clock=Clock())
    hub.attach(SubscriberQueue(), ["x:1"])
    running = asyncio.create_task(board.run())
    try:
        for _ in range(1000):
            if hub.sent:
                break
            await asyncio.sleep(0.001)
    finally:
        running.cancel()
    assert hub.fail == 0 and hub.sent == [{"x:1": 1}]
