"""The ``local`` hub: in-process fan-out, state in an embedded SQLite file.

Every commit is written to SQLite (WAL, one transaction per commit)
*before* anything changes in memory or is fanned out, so a seq a client has
seen is always one a restarted gateway still knows — that is what makes
``Last-Event-ID`` survive a restart without gaps or duplicates — and a
commit the file refused leaves no trace: the poller observes the change
again and commits the same seq once the file takes writes again.

Memory follows active work, not retention:

* *live* tasks (not terminal) keep their snapshot and history in memory;
  the poller reads them on every poll and their subscribers resume from them;
* *finished* tasks (terminal, kept for their result window) live in SQLite;
  their snapshots pass through a bounded LRU cache (``snapshot_cache``
  entries, which also remembers tasks the file does not hold), their
  history is read from the file when a subscriber resumes.

A restart loads the live tasks only. The file is the only writer's: no
other process changes it under this hub, so a cached answer stays true
until this hub itself changes it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence

import msgspec

from gateway.core.model import Event, EventKind
from gateway.core.sse import Encoded
from gateway.core.tracker import notice
from gateway.exceptions import BackendError, SeqConflict
from gateway.hub.base import HistoryPage, Hub, Watch, page_of
from gateway.hub.fanout import FanOut
from gateway.hub.queue import CloseReason

__all__ = ["STORE_UNAVAILABLE", "LocalHub", "SnapshotCache", "check_writable"]

# Code of the notice a task's subscribers get when its next event cannot be stored.
STORE_UNAVAILABLE = "store_unavailable"

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
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value
);
-- Start-up loads the live tasks (expires_at IS NULL); purge takes the expired ones.
CREATE INDEX IF NOT EXISTS snapshots_by_expiry ON snapshots (expires_at);
"""

# History reads go through the (task, seq) primary key: one range scan per resume.
_LIVE_SNAPSHOTS = "SELECT task, body FROM snapshots WHERE expires_at IS NULL"
_LIVE_HISTORY = (
    "SELECT h.task, h.body FROM snapshots AS s JOIN history AS h ON h.task = s.task "
    "WHERE s.expires_at IS NULL ORDER BY h.task, h.seq"
)

# Pages the WAL may hold before a commit copies them into the file. A live
# task's latest history page and its snapshot page are rewritten by each of
# its commits; copied every 1,000 pages (SQLite's default) the same pages were
# copied again and again: at 10,000 events/s over 1,000 tasks, checkpoints
# were about a fifth of a commit's CPU. 10,000 pages is a WAL of about 40 MB.
WAL_CHECKPOINT_PAGES = 10_000
# A task's history is trimmed to ``history_limit`` on disk every this many
# seqs (one DELETE per task per commit was a tenth of the SQLite work); reads
# from the file apply the limit themselves, so no more is ever served.
TRIM_EVERY = 32

_event_decoder = msgspec.json.Decoder(Event)
_watch_decoder = msgspec.json.Decoder(Watch)
_encoder = msgspec.json.Encoder()

_UNAVAILABLE_MESSAGE = (
    "the gateway cannot store new events right now; they follow as soon as it can again"
)


def _is_file(path: str) -> bool:
    return path != ":memory:" and not path.startswith("file:")


def check_writable(path: str) -> None:
    """Fail now, with the OS's reason, if the state file cannot be written.

    SQLite opens a read-only file without complaint and only fails at the
    first write; this opens the file and its directory (where the WAL and
    shared-memory files are created) for writing, then opens it with SQLite
    and writes one row (a file that is not a SQLite database, or a full
    disk, fails there).

    Raises:
        BackendError: naming the path and the OS error (or SQLite's reason).
    """
    if not _is_file(path):
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        where = exc.filename or path
        raise BackendError(
            f"the state file {path} is not writable: {exc.strerror or exc} ({where})"
        ) from exc
    _open(path).close()


def _open(path: str) -> sqlite3.Connection:
    """Connect, set WAL mode, create the schema and write once (a refused write fails here).

    Raises:
        BackendError: naming the path and SQLite's reason.
    """
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise BackendError(f"the state file {path} cannot be opened: {exc}") from exc
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        db.executescript(_SCHEMA)
        _probe(db)
    except sqlite3.Error as exc:
        db.close()
        raise BackendError(f"the state file {path} cannot be used: {exc}") from exc
    return db


def _probe(db: sqlite3.Connection) -> None:
    """The smallest real write: one row of ``meta``."""
    db.execute(
        "INSERT INTO meta VALUES ('written_at', ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (time.time(),),
    )


def _rollback(db: sqlite3.Connection) -> None:
    """End a failed transaction; SQLite may already have rolled it back itself."""
    with contextlib.suppress(sqlite3.Error):
        if db.in_transaction:
            db.execute("ROLLBACK")


class SnapshotCache:
    """A bounded LRU of finished tasks' snapshots; ``None`` records a task the file lacks."""

    def __init__(self, size: int) -> None:
        self.size = max(0, size)
        self._entries: OrderedDict[str, Event | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, task: str) -> bool:
        return task in self._entries

    def get(self, task: str) -> Event | None:
        """The cached snapshot (``None`` also when absent: test ``in`` first)."""
        entry = self._entries.get(task)
        if task in self._entries:
            self._entries.move_to_end(task)
        return entry

    def put(self, task: str, snapshot: Event | None) -> None:
        if self.size == 0:
            return
        self._entries[task] = snapshot
        self._entries.move_to_end(task)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def discard(self, task: str) -> None:
        self._entries.pop(task, None)


class LocalHub(Hub):
    def __init__(
        self,
        path: str = ":memory:",
        *,
        history_limit: int = 256,
        snapshot_cache: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.history_limit = history_limit
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        # Live tasks only: their latest event and their recent history.
        self._snapshots: dict[str, Event] = {}
        self._history: dict[str, deque[Encoded]] = {}
        self.finished = SnapshotCache(snapshot_cache)
        self._fault: str | None = None  # the last write failure, until a write succeeds
        self._noticed: set[str] = set()  # tasks told about the current outage
        self.fanout = FanOut()

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Open the file, check it takes writes, load the live tasks.

        Raises:
            BackendError: the file cannot be opened or written (names path and reason).
        """
        check_writable(self.path)
        db = _open(self.path)
        try:
            for task, body in db.execute(_LIVE_SNAPSHOTS):
                self._snapshots[task] = _event_decoder.decode(body)
            for task, body in db.execute(_LIVE_HISTORY):
                self._history_of(task).append(Encoded(_event_decoder.decode(body)))
        except sqlite3.Error as exc:
            db.close()
            raise BackendError(f"cannot use the state file {self.path}: {exc}") from exc
        self._db = db

    async def close(self) -> None:
        self.fanout.close_all(CloseReason.DRAINING)
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    async def ready(self) -> bool:
        """Open, and taking writes: after a failed write, a small write decides."""
        if self._db is None:
            return False
        if self._fault is None:
            return True
        try:
            _probe(self._db)
        except sqlite3.Error as exc:
            self._fault = self._describe("cannot write", exc)
            return False
        self._recovered()
        return True

    @property
    def fault(self) -> str | None:
        if self._db is None:
            return f"the state file {self.path} is not open"
        return self._fault

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise BackendError("the local hub is not started")
        return self._db

    def _describe(self, what: str, exc: sqlite3.Error) -> str:
        return f"{what} the state file {self.path}: {exc}"

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[sqlite3.Connection]:
        """Translate SQLite's errors at the boundary; a read failure is no write fault."""
        db = self.db
        try:
            yield db
        except sqlite3.Error as exc:
            raise BackendError(self._describe(f"cannot read {what} from", exc)) from exc

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[sqlite3.Connection]:
        """One transaction; on failure it is rolled back and the hub is not ready."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(db)
            self._fault = self._describe("cannot write", exc)
            raise BackendError(self._describe(f"cannot store {what} in", exc)) from exc
        except BaseException:
            _rollback(db)
            raise
        self._recovered()

    def _recovered(self) -> None:
        self._fault = None
        self._noticed.clear()

    # -- state --------------------------------------------------------------

    async def snapshot(self, task: str) -> Event | None:
        live = self._snapshots.get(task)
        if live is not None:
            return live
        if task in self.finished:
            return self.finished.get(task)
        with self._reading("a snapshot") as db:
            row = db.execute("SELECT body FROM snapshots WHERE task = ?", (task,)).fetchone()
        snapshot = _event_decoder.decode(row[0]) if row is not None else None
        self.finished.put(task, snapshot)
        return snapshot

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
        before: dict[str, Event | None] = {}
        encoded: list[Encoded] = []
        for event in events:
            prev = expected.get(event.task)
            if prev is None:
                current = before[event.task] = await self.snapshot(event.task)
                prev = current.seq if current is not None else 0
            if event.seq != prev + 1:
                raise SeqConflict(f"{event.task}: seq {event.seq} does not follow {prev}")
            expected[event.task] = event.seq
            enc = Encoded(event)
            encoded.append(enc)
            expires_at = now + terminal_ttl_s if event.terminal else None
            rows_hist.append((event.task, event.seq, enc.json))
            rows_snap.append((event.task, event.seq, expires_at, enc.json))
        # A finished task taking events again becomes live: its history is on disk.
        revived = {
            task: self._read_history(task)
            for task, previous in before.items()
            if previous is not None and task not in self._snapshots
        }
        try:
            with self._writing("events") as db:
                db.executemany("INSERT INTO history VALUES (?, ?, ?)", rows_hist)
                db.executemany(
                    "INSERT INTO snapshots VALUES (?, ?, ?, ?) ON CONFLICT(task) DO UPDATE SET "
                    "seq = excluded.seq, expires_at = excluded.expires_at, body = excluded.body",
                    rows_snap,
                )
                trims = [
                    (task, seq - self.history_limit)
                    for task, seq in expected.items()
                    if seq > self.history_limit and seq % TRIM_EVERY == 0
                ]
                if trims:
                    db.executemany("DELETE FROM history WHERE task = ? AND seq <= ?", trims)
        except BackendError:
            self._tell_outage(before)
            raise
        # Stored: only now does memory (and any subscriber) learn of it.
        self._history.update(revived)
        for enc in encoded:
            self._remember(enc)
            self.fanout.deliver(enc)
        return encoded

    def _remember(self, enc: Encoded) -> None:
        task = enc.event.task
        if enc.event.terminal:
            # Finished: served from the file from now on, through the cache.
            self._snapshots.pop(task, None)
            self._history.pop(task, None)
            self.finished.put(task, enc.event)
            return
        self.finished.discard(task)
        self._snapshots[task] = enc.event
        self._history_of(task).append(enc)

    def _tell_outage(self, tasks: dict[str, Event | None]) -> None:
        """Once per outage, each affected task's subscribers hear why nothing comes."""
        for task, current in tasks.items():
            if task in self._noticed or not self.fanout.subscriber_count(task):
                continue
            self._noticed.add(task)
            event = notice(
                current,
                task=task,
                code=STORE_UNAVAILABLE,
                message=_UNAVAILABLE_MESSAGE,
                now=self._clock(),
            )
            self.fanout.deliver(Encoded(event))

    async def announce(self, event: Event) -> None:
        if event.event is not EventKind.NOTICE:
            raise ValueError("announce() is for notices; state changes go through commit()")
        self.fanout.deliver(Encoded(event))

    async def history(self, task: str, after_seq: int) -> list[Encoded] | None:
        current = await self.snapshot(task)
        latest = current.seq if current is not None else 0
        if after_seq >= latest:
            return []
        events = self._history.get(task)
        if events is None:
            events = self._read_history(task, after_seq)
        if not events or events[0].event.seq > after_seq + 1:
            return None
        return [enc for enc in events if enc.event.seq > after_seq]

    async def history_page(self, task: str, after: int, limit: int) -> HistoryPage:
        current = await self.snapshot(task)
        latest = current.seq if current is not None else 0
        kept: Sequence[Encoded] = ()
        if after < latest:
            live = self._history.get(task)
            if live is not None:
                kept = live
            else:
                with self._reading("history") as db:
                    rows = db.execute(
                        "SELECT body FROM history WHERE task = ? AND seq > ? ORDER BY seq LIMIT ?",
                        (task, max(after, latest - self.history_limit), limit),
                    ).fetchall()
                kept = [Encoded(_event_decoder.decode(body)) for (body,) in rows]
        return page_of(kept, after=after, limit=limit, latest=latest, known=current is not None)

    def _read_history(self, task: str, after_seq: int = 0) -> deque[Encoded]:
        with self._reading("history") as db:
            rows = db.execute(
                "SELECT body FROM history WHERE task = ? AND seq > ? ORDER BY seq",
                (task, after_seq),
            ).fetchall()
        return deque(
            (Encoded(_event_decoder.decode(body)) for (body,) in rows), maxlen=self.history_limit
        )

    def _history_of(self, task: str) -> deque[Encoded]:
        history = self._history.get(task)
        if history is None:
            history = self._history[task] = deque(maxlen=self.history_limit)
        return history

    @property
    def live_tasks(self) -> int:
        """How many tasks are held in memory (not terminal)."""
        return len(self._snapshots)

    # -- watches ------------------------------------------------------------

    async def put_watch(self, watch: Watch) -> None:
        with self._writing("a watch") as db:
            db.execute(
                "INSERT INTO watches VALUES (?, ?) "
                "ON CONFLICT(task) DO UPDATE SET body = excluded.body",
                (watch.task, _encoder.encode(watch)),
            )

    async def drop_watch(self, task: str) -> bool:
        with self._writing("the end of a watch") as db:
            cursor = db.execute("DELETE FROM watches WHERE task = ?", (task,))
        return cursor.rowcount > 0

    async def watches(self) -> list[Watch]:
        with self._reading("watches") as db:
            rows = db.execute("SELECT body FROM watches").fetchall()
        return [_watch_decoder.decode(body) for (body,) in rows]

    async def purge(self, now: float) -> int:
        with self._reading("expired tasks") as db:
            gone = [
                task
                for (task,) in db.execute(
                    "SELECT task FROM snapshots WHERE expires_at <= ?", (now,)
                ).fetchall()
            ]
        if not gone:
            return 0
        keys = [(task,) for task in gone]
        with self._writing("a purge") as db:
            db.executemany("DELETE FROM snapshots WHERE task = ?", keys)
            db.executemany("DELETE FROM history WHERE task = ?", keys)
            db.executemany("DELETE FROM watches WHERE task = ?", keys)
        for task in gone:
            self.finished.discard(task)
        return len(gone)
