"""gateway.aio.Batcher: what one pass of the loop asks for goes out as one batch."""

from __future__ import annotations

import asyncio

import pytest

from gateway.aio import Batcher


async def batches_sent(rec: Recorder, n: int) -> None:
    """Let the loop run until ``n`` batches have been sent."""
    for _ in range(20):
        if len(rec.batches) >= n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{len(rec.batches)} batches sent, {n} expected")


class Recorder:
    """A batch function that records every batch and can be held open."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def run(self, items: list[int]) -> list[str]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [f"r{item}" for item in items]


async def test_calls_made_in_one_pass_share_one_batch_and_get_their_own_results() -> None:
    rec = Recorder()
    batch = Batcher(rec.run)
    results = await asyncio.gather(*(batch(i) for i in range(100)))
    assert results == [f"r{i}" for i in range(100)]
    assert rec.batches == [list(range(100))]


async def test_a_call_made_while_a_batch_is_out_goes_in_the_next_one() -> None:
    """An item is sent after its call: a read is never older than the call."""
    rec = Recorder()
    rec.gate.clear()
    batch = Batcher(rec.run)
    first = asyncio.create_task(batch(1))
    await batches_sent(rec, 1)  # and held open
    second = asyncio.create_task(batch(2))
    await batches_sent(rec, 2)
    assert rec.batches == [[1], [2]]
    rec.gate.set()
    assert await asyncio.gather(first, second) == ["r1", "r2"]


async def test_a_batch_larger_than_max_size_is_split() -> None:
    rec = Recorder()
    batch = Batcher(rec.run, max_size=4)
    results = await asyncio.gather(*(batch(i) for i in range(10)))
    assert results == [f"r{i}" for i in range(10)]
    assert rec.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_is_fresh() -> None:
    rec = Recorder()
    rec.fail = ConnectionError("down")
    batch = Batcher(rec.run)
    outcomes = await asyncio.gather(batch(1), batch(2), return_exceptions=True)
    assert [type(o) for o in outcomes] == [ConnectionError, ConnectionError]
    rec.fail = None
    assert await batch(3) == "r3"
    assert rec.batches == [[1, 2], [3]]


async def test_a_cancelled_caller_leaves_the_batch_to_the_others() -> None:
    rec = Recorder()
    rec.gate.clear()
    batch = Batcher(rec.run)
    leaving = asyncio.create_task(batch(1))
    staying = asyncio.create_task(batch(2))
    await batches_sent(rec, 1)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    rec.gate.set()
    assert await staying == "r2"
    assert rec.batches == [[1, 2]]


async def test_shared_callers_of_an_equal_item_share_one_place_in_the_batch() -> None:
    rec = Recorder()
    batch = Batcher(rec.run, max_size=4, share=True)
    results = await asyncio.gather(*(batch(i % 3) for i in range(100)))
    assert results == [f"r{i % 3}" for i in range(100)]
    assert rec.batches == [[0, 1, 2]]
    assert await batch(1) == "r1"  # a later pass asks again
    assert rec.batches == [[0, 1, 2], [1]]
