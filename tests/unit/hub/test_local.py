"""The local hub's memory policy and its behaviour when SQLite refuses work.

SQLite itself is the fault injector: ``PRAGMA query_only`` makes every write
fail as on a read-only file, ``PRAGMA max_page_count`` as on a full disk,
and closing the connection underneath makes every call fail.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.core.model import Event, EventKind, State
from gateway.exceptions import BackendError
from gateway.hub.base import Watch
from gateway.hub.local import (
    STORE_UNAVAILABLE,
    TRIM_EVERY,
    LocalHub,
    SnapshotCache,
    check_writable,
)
from gateway.hub.queue import SubscriberQueue
from tests.contract.test_hub_contract import ev

NOW = 1_800_000_000.0


def clock() -> float:
    return NOW


async def finish(hub: LocalHub, task: str) -> None:
    await hub.commit(
        [ev(task, 1), ev(task, 2, progress=50), ev(task, 3, State.SUCCEEDED)],
        terminal_ttl_s=3600,
    )


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[LocalHub]:
    hub = LocalHub(str(tmp_path / "state.db"), snapshot_cache=2, clock=clock)
    await hub.start()
    yield hub
    await hub.close()


# -- the snapshot cache -------------------------------------------------------


def test_cache_keeps_the_most_recently_used_within_its_size() -> None:
    cache = SnapshotCache(2)
    a, b, c = ev("x:a", 1), ev("x:b", 1), ev("x:c", 1)
    cache.put("x:a", a)
    cache.put("x:b", b)
    assert cache.get("x:a") is a  # a is now the most recent
    cache.put("x:c", c)
    assert len(cache) == 2
    assert "x:b" not in cache
    assert cache.get("x:a") is a and cache.get("x:c") is c


def test_cache_remembers_absent_tasks_and_size_zero_keeps_nothing() -> None:
    cache = SnapshotCache(4)
    cache.put("x:gone", None)
    assert "x:gone" in cache and cache.get("x:gone") is None
    cache.discard("x:gone")
    assert "x:gone" not in cache
    off = SnapshotCache(0)
    off.put("x:a", ev("x:a", 1))
    assert len(off) == 0 and "x:a" not in off


# -- memory follows active work -------------------------------------------------


async def test_finished_tasks_leave_memory_and_are_read_from_the_file(hub: LocalHub) -> None:
    for i in range(10):
        await finish(hub, f"ailab:t{i}")
    await hub.commit([ev("ailab:live", 1)], terminal_ttl_s=3600)
    assert hub.live_tasks == 1
    assert len(hub.finished) <= 2
    for i in range(10):
        snap = await hub.snapshot(f"ailab:t{i}")
        assert snap is not None and snap.seq == 3 and snap.terminal
        missed = await hub.history(f"ailab:t{i}", 1)
        assert missed is not None and [e.event.seq for e in missed] == [2, 3]
        assert await hub.history(f"ailab:t{i}", 3) == []
    assert len(hub.finished) <= 2


async def test_a_restart_loads_only_the_live_tasks(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    first = LocalHub(path, clock=clock)
    await first.start()
    for i in range(5):
        await finish(first, f"ailab:t{i}")
    await first.commit([ev("ailab:live", 1), ev("ailab:live", 2, progress=5)], terminal_ttl_s=60)
    await first.close()

    second = LocalHub(path, clock=clock)
    await second.start()
    try:
        assert second.live_tasks == 1 and len(second.finished) == 0
        live = await second.history("ailab:live", 0)
        assert live is not None and [e.event.seq for e in live] == [1, 2]
        done = await second.history("ailab:t3", 0)
        assert done is not None and [e.event.seq for e in done] == [1, 2, 3]
        await second.commit([ev("ailab:live", 3, State.FAILED)], terminal_ttl_s=60)
        assert second.live_tasks == 0
    finally:
        await second.close()


async def test_a_finished_task_taking_events_again_keeps_its_whole_history(
    hub: LocalHub,
) -> None:
    await finish(hub, "ailab:a")
    await hub.commit([ev("ailab:a", 4)], terminal_ttl_s=60)  # e.g. a forced state
    kept = await hub.history("ailab:a", 0)
    assert kept is not None and [e.event.seq for e in kept] == [1, 2, 3, 4]


async def test_history_on_disk_is_trimmed_in_steps_and_never_served_beyond_the_limit(
    tmp_path: Path,
) -> None:
    # The file keeps at most TRIM_EVERY - 1 rows more than the limit; reads
    # from it (a finished task, after a restart too) serve the limit exactly.
    path = str(tmp_path / "state.db")
    hub = LocalHub(path, history_limit=5, snapshot_cache=0, clock=clock)
    await hub.start()
    try:
        for seq in range(1, 100):
            await hub.commit([ev("ailab:a", seq, progress=seq % 100)], terminal_ttl_s=60)
            (rows,) = hub.db.execute("SELECT count(*) FROM history").fetchone()
            assert rows <= 5 + TRIM_EVERY - 1
        await hub.commit([ev("ailab:a", 100, State.SUCCEEDED)], terminal_ttl_s=60)
    finally:
        await hub.close()
    again = LocalHub(path, history_limit=5, snapshot_cache=0, clock=clock)
    await again.start()
    try:
        assert await again.history("ailab:a", 94) is None  # 95 is no longer kept
        kept = await again.history("ailab:a", 95)
        assert kept is not None and [e.event.seq for e in kept] == [96, 97, 98, 99, 100]
        page = await again.history_page("ailab:a", 0, 50)
        assert page.gap and [e.event.seq for e in page.events] == [96, 97, 98, 99, 100]
    finally:
        await again.close()


async def test_purge_forgets_finished_tasks_in_the_file_and_the_cache(tmp_path: Path) -> None:
    now = [NOW]
    hub = LocalHub(str(tmp_path / "state.db"), clock=lambda: now[0])
    await hub.start()
    try:
        await hub.commit([ev("ailab:a", 1, State.SUCCEEDED)], terminal_ttl_s=10)
        await hub.commit([ev("ailab:b", 1)], terminal_ttl_s=10)
        assert await hub.snapshot("ailab:a") is not None  # now cached
        assert await hub.purge(now[0] + 11) == 1
        assert await hub.snapshot("ailab:a") is None
        assert await hub.history("ailab:a", 0) == []
        rows = hub.db.execute("SELECT count(*) FROM history WHERE task = 'ailab:a'").fetchone()
        assert rows == (0,)
        assert await hub.snapshot("ailab:b") is not None
        await hub.commit([ev("ailab:a", 1)], terminal_ttl_s=10)  # the id starts over
    finally:
        await hub.close()


async def test_the_file_has_an_index_for_expiry() -> None:
    hub = LocalHub(":memory:")
    await hub.start()
    try:
        plan = hub.db.execute(
            "EXPLAIN QUERY PLAN SELECT task FROM snapshots WHERE expires_at <= 1"
        ).fetchall()
        assert any("snapshots_by_expiry" in str(row) for row in plan)
    finally:
        await hub.close()


# -- a store that refuses writes ----------------------------------------------------


async def test_a_refused_commit_changes_nothing_and_tells_subscribers_once(hub: LocalHub) -> None:
    await hub.commit([ev("ailab:a", 1)], terminal_ttl_s=60)
    queue = SubscriberQueue()
    hub.attach(queue, ["ailab:a"])
    hub.db.execute("PRAGMA query_only = 1")

    for _ in range(2):
        with pytest.raises(BackendError, match=r"state\.db") as caught:
            await hub.commit([ev("ailab:a", 2, State.SUCCEEDED)], terminal_ttl_s=60)
        assert isinstance(caught.value.__cause__, sqlite3.Error)
    snap = await hub.snapshot("ailab:a")
    assert snap is not None and snap.seq == 1 and not snap.terminal
    stored = await hub.history("ailab:a", 0)
    assert stored is not None and [e.event.seq for e in stored] == [1]
    assert not await hub.ready()
    assert hub.fault is not None and "state.db" in hub.fault
    got = await queue.get_batch(max_wait_s=1)
    assert [(e.event.event, e.event.code, e.event.seq) for e in got] == [
        (EventKind.NOTICE, STORE_UNAVAILABLE, 1)
    ]

    hub.db.execute("PRAGMA query_only = 0")
    assert await hub.ready()
    assert hub.fault is None
    await hub.commit([ev("ailab:a", 2, State.SUCCEEDED)], terminal_ttl_s=60)
    got = await queue.get_batch(max_wait_s=1)
    assert [(e.event.event, e.event.seq) for e in got] == [(EventKind.STATE, 2)]


async def test_each_outage_is_told_again(hub: LocalHub) -> None:
    await hub.commit([ev("ailab:a", 1)], terminal_ttl_s=60)
    queue = SubscriberQueue()
    hub.attach(queue, ["ailab:a"])
    for seq in (2, 3):
        hub.db.execute("PRAGMA query_only = 1")
        with pytest.raises(BackendError):
            await hub.commit([ev("ailab:a", seq, progress=seq)], terminal_ttl_s=60)
        hub.db.execute("PRAGMA query_only = 0")
        await hub.commit([ev("ailab:a", seq, progress=seq)], terminal_ttl_s=60)
    got = await queue.get_batch(max_wait_s=1)
    assert [(e.event.code, e.event.seq) for e in got] == [
        (STORE_UNAVAILABLE, 1),
        (None, 2),
        (STORE_UNAVAILABLE, 2),
        (None, 3),
    ]


async def test_a_full_file_is_a_backend_error_and_the_seq_is_committed_later(
    hub: LocalHub,
) -> None:
    await hub.commit([ev("ailab:a", 1)], terminal_ttl_s=60)
    (pages,) = hub.db.execute("PRAGMA page_count").fetchone()
    hub.db.execute(f"PRAGMA max_page_count = {pages}")
    big = [ev(f"ailab:b{i}", 1) for i in range(200)]
    with pytest.raises(BackendError, match="full"):
        await hub.commit(big, terminal_ttl_s=60)
    assert await hub.snapshot("ailab:b0") is None
    assert hub.fault is not None and "full" in hub.fault
    hub.db.execute("PRAGMA max_page_count = 1073741823")
    await hub.commit(big, terminal_ttl_s=60)
    snap = await hub.snapshot("ailab:b199")
    assert snap is not None and snap.seq == 1
    assert await hub.ready()


async def test_a_refused_watch_is_a_backend_error(hub: LocalHub) -> None:
    hub.db.execute("PRAGMA query_only = 1")
    with pytest.raises(BackendError, match="watch"):
        await hub.put_watch(Watch(task="ailab:a", created_at=1.0))
    with pytest.raises(BackendError):
        await hub.drop_watch("ailab:a")
    assert not await hub.ready()


async def test_every_call_translates_sqlite_errors(hub: LocalHub) -> None:
    await finish(hub, "ailab:done")
    await hub.commit([ev("ailab:live", 1)], terminal_ttl_s=60)
    hub.finished = SnapshotCache(0)  # nothing cached: every read goes to the file
    hub.db.close()  # every use now raises sqlite3.ProgrammingError
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "snapshot": lambda: hub.snapshot("ailab:done"),
        "history": lambda: hub.history("ailab:done", 0),
        "commit": lambda: hub.commit([ev("ailab:live", 2)], terminal_ttl_s=60),
        "put_watch": lambda: hub.put_watch(Watch(task="ailab:x", created_at=1.0)),
        "drop_watch": lambda: hub.drop_watch("ailab:x"),
        "watches": hub.watches,
        "purge": lambda: hub.purge(NOW + 10_000),
    }
    for name, call in calls.items():
        with pytest.raises(BackendError) as caught:
            await call()
        assert isinstance(caught.value.__cause__, sqlite3.Error), name
        assert "state.db" in str(caught.value), name
    live = await hub.snapshot("ailab:live")
    assert live is not None and live.seq == 1  # the refused commit changed nothing
    assert not await hub.ready()


# -- the start-up check --------------------------------------------------------------


def test_check_writable_names_the_path_and_the_os_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "state.db"
    with pytest.raises(BackendError, match="No such file or directory") as caught:
        check_writable(str(missing))
    assert str(missing) in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)


def test_check_writable_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(BackendError, match="not a database"):
        check_writable(str(path))


async def test_start_fails_with_a_backend_error_on_an_unusable_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not SQLite" * 100)
    hub = LocalHub(str(path))
    with pytest.raises(BackendError, match=r"state\.db"):
        await hub.start()
    assert not await hub.ready()


def test_in_memory_needs_no_check() -> None:
    check_writable(":memory:")


async def test_notice_carries_the_current_snapshot(hub: LocalHub) -> None:
    await hub.commit([ev("ailab:a", 1), ev("ailab:a", 2, progress=40)], terminal_ttl_s=60)
    queue = SubscriberQueue()
    hub.attach(queue, ["ailab:a"])
    hub.db.execute("PRAGMA query_only = 1")
    with pytest.raises(BackendError):
        await hub.commit([ev("ailab:a", 3, progress=60)], terminal_ttl_s=60)
    (item,) = await queue.get_batch(max_wait_s=1)
    told: Event = item.event
    assert (told.seq, told.progress, told.state) == (2, 40, State.RUNNING)
    assert told.message is not None and "state.db" not in told.message  # no paths to clients
