"""The ``local`` hub: in-process fan-out, state in an embedded SQLite file.

Reads are served from memory; every commit is written through to SQLite
(WAL, one transaction per commit) *before* it is fanned out, so a seq a
client has seen is always one a restarted gateway still knows — that is
what makes ``Last-Event-ID`` survive a restart without gaps or duplicates.
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import msgspec

from gateway.core.model import Event, EventKind
from gateway.core.sse import Encoded
from gateway.exceptions import BackendError, SeqConflict
from gateway.hub.base import Hub, Watch
from gateway.hub.fanout import FanOut
from gateway.hub.queue import CloseReason

__all__ = ["LocalHub"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    task TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    expires_at REAL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    task TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (task, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watches (
    task TEXT PRIMARY KEY,
    body BLOB NOT NULL
);
"""

_event_decoder = msgspec.json.Decoder(Event)
_watch_decoder = msgspec.json.Decoder(Watch)
_encoder = msgspec.json.Encoder()


class LocalHub(Hub):
    def __init__(
        self,
        path: str = ":memory:",
        *,
        history_limit: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.history_limit = history_limit
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._snapshots: dict[str, Event] = {}
        self._expires: dict[str, float] = {}
        self._history: dict[str, deque[Encoded]] = {}
        self.fanout = FanOut()

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open the state file {self.path!r}: {exc}") from exc
        self._db = db
        for task, expires_at, body in db.execute("SELECT task, expires_at, body FROM snapshots"):
            self._snapshots[task] = _event_decoder.decode(body)
            if expires_at is not None:
                self._expires[task] = expires_at
        for task, body in db.execute("SELECT task, body FROM history ORDER BY task, seq"):
            self._history_of(task).append(Encoded(_event_decoder.decode(body)))

    async def close(self) -> None:
        self.fanout.close_all(CloseReason.DRAINING)
        if self._db is not None:
            self._db.close()
            self._db = None

    async def ready(self) -> bool:
        return self._db is not None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise BackendError("the local hub is not started")
        return self._db

    # -- state --------------------------------------------------------------

    async def snapshot(self, task: str) -> Event | None:
        return self._snapshots.get(task)

    async def commit(
        self,
        events: Sequence[Event],
        *,
        terminal_ttl_s: float,
        leases: Mapping[str, str] | None = None,  # one process: a claim never lapses
    ) -> list[Encoded]:
        now = self._clock()
        rows_hist: list[tuple[str, int, bytes]] = []
        rows_snap: list[tuple[str, int, float | None, bytes]] = []
        expected: dict[str, int] = {}
        encoded: list[Encoded] = []
        for event in events:
            prev = expected.get(event.task)
            if prev is None:
                current = self._snapshots.get(event.task)
                prev = current.seq if current is not None else 0
            if event.seq != prev + 1:
                raise SeqConflict(f"{event.task}: seq {event.seq} does not follow {prev}")
            expected[event.task] = event.seq
            enc = Encoded(event)
            encoded.append(enc)
            expires_at = now + terminal_ttl_s if event.terminal else None
            rows_hist.append((event.task, event.seq, enc.json))
            rows_snap.append((event.task, event.seq, expires_at, enc.json))
        db = self.db
        try:
            db.execute("BEGIN")
            db.executemany("INSERT INTO history VALUES (?, ?, ?)", rows_hist)
            db.executemany(
                "INSERT INTO snapshots VALUES (?, ?, ?, ?) ON CONFLICT(task) DO UPDATE SET "
                "seq = excluded.seq, expires_at = excluded.expires_at, body = excluded.body",
                rows_snap,
            )
            db.executemany(
                "DELETE FROM history WHERE task = ? AND seq <= ?",
                [(task, seq - self.history_limit) for task, seq in expected.items()],
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise BackendError(f"cannot store events: {exc}") from exc
        for enc in encoded:
            task = enc.event.task
            self._snapshots[task] = enc.event
            if enc.event.terminal:
                self._expires[task] = now + terminal_ttl_s
            self._history_of(task).append(enc)
            self.fanout.deliver(enc)
        return encoded

    async def announce(self, event: Event) -> None:
        if event.event is not EventKind.NOTICE:
            raise ValueError("announce() is for notices; state changes go through commit()")
        self.fanout.deliver(Encoded(event))

    async def history(self, task: str, after_seq: int) -> list[Encoded] | None:
        events = self._history.get(task)
        current = self._snapshots.get(task)
        latest = current.seq if current is not None else 0
        if after_seq >= latest:
            return []
        if not events or events[0].event.seq > after_seq + 1:
            return None
        return [enc for enc in events if enc.event.seq > after_seq]

    def _history_of(self, task: str) -> deque[Encoded]:
        history = self._history.get(task)
        if history is None:
            history = self._history[task] = deque(maxlen=self.history_limit)
        return history

    # -- fan-out ------------------------------------------------------------

    # -- watches ------------------------------------------------------------

    async def put_watch(self, watch: Watch) -> None:
        self.db.execute(
            "INSERT INTO watches VALUES (?, ?) "
            "ON CONFLICT(task) DO UPDATE SET body = excluded.body",
            (watch.task, _encoder.encode(watch)),
        )

    async def drop_watch(self, task: str) -> bool:
        cursor = self.db.execute("DELETE FROM watches WHERE task = ?", (task,))
        return cursor.rowcount > 0

    async def watches(self) -> list[Watch]:
        return [
            _watch_decoder.decode(body) for (body,) in self.db.execute("SELECT body FROM watches")
        ]

    async def purge(self, now: float) -> int:
        gone = [task for task, at in self._expires.items() if at <= now]
        if not gone:
            return 0
        db = self.db
        db.execute("BEGIN")
        db.executemany("DELETE FROM snapshots WHERE task = ?", [(t,) for t in gone])
        db.executemany("DELETE FROM history WHERE task = ?", [(t,) for t in gone])
        db.executemany("DELETE FROM watches WHERE task = ?", [(t,) for t in gone])
        db.execute("COMMIT")
        for task in gone:
            self._snapshots.pop(task, None)
            self._history.pop(task, None)
            del self._expires[task]
        return len(gone)
