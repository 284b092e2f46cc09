"""The durable outbox: webhook registrations and the deliveries still owed.

One interface, two stores — :class:`SqliteOutbox` (the ``local`` backend's
state file) and ``RedisOutbox`` (the ``redis`` backend, shared by every
node) — and one contract test suite (``tests/unit/webhooks/test_outbox.py``).

Guarantees:

* **Once per event.** Each registration keeps a *mark*, the highest seq
  already considered; :meth:`Outbox.enqueue` stores only deliveries above it
  and raises it in the same atomic step, so a replay of the same events (a
  catch-up after a restart, two nodes racing) never queues one twice.
* **One sender.** :meth:`Outbox.claim` hands each due delivery to one caller
  and hides it for ``lease_s``; only the holder of the claim can
  :meth:`~Outbox.finish` or :meth:`~Outbox.retry` it. A node that dies holding
  a claim delays that delivery by at most the lease.
* **Durable.** A delivery leaves the store only when delivered or abandoned.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from gateway.exceptions import BackendError
from gateway.webhooks.model import Delivery, Registration, WebhookTarget

__all__ = ["Outbox", "SqliteOutbox"]


class Outbox(ABC):
    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Open the store."""

    async def epoch(self) -> str:
        """The store's current epoch, part of every delivery id ("": one that never
        loses its contents while the gateway runs)."""
        return ""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the store."""

    @abstractmethod
    async def register(self, task: str, target: WebhookTarget, mark: int) -> None:
        """Set (or replace) the task's target; events up to seq ``mark`` are not owed to it."""

    @abstractmethod
    async def unregister(self, task: str) -> bool:
        """Forget the task's target (pending deliveries stay); whether there was one."""

    @abstractmethod
    async def registrations(self, tasks: Sequence[str] | None = None) -> dict[str, Registration]:
        """The registrations of ``tasks`` that exist (of every task when ``None``)."""

    @abstractmethod
    async def enqueue(
        self, task: str, deliveries: Sequence[Delivery], seq: int, *, done: bool
    ) -> int:
        """Atomically store the deliveries above the task's mark and raise the mark to ``seq``.

        ``done`` (the task reached its terminal event) removes the registration
        in the same step. Nothing is stored if the task has no registration.

        Returns:
            How many deliveries were stored.
        """

    @abstractmethod
    async def claim(self, now: float, lease_until: float, limit: int, token: str) -> list[Delivery]:
        """Up to ``limit`` deliveries due by ``now``, held under ``token`` until ``lease_until``."""

    @abstractmethod
    async def finish(self, delivery: Delivery) -> bool:
        """Remove a claimed delivery (delivered or abandoned); ``False`` if the claim was lost."""

    @abstractmethod
    async def retry(self, delivery: Delivery, due_at: float, error: str) -> bool:
        """Release a claimed delivery for another attempt at ``due_at``, one attempt more."""

    @abstractmethod
    async def pending(self) -> int:
        """How many deliveries are owed."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_targets (
    task TEXT PRIMARY KEY,
    target BLOB NOT NULL,
    mark INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,  -- the delivery's key (Delivery.slot): its webhook-id and URL
    task TEXT NOT NULL,
    seq INTEGER NOT NULL,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    due_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    claim TEXT
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (due_at);
"""

_COLUMNS = "id, task, seq, url, payload, created_at, due_at, attempts, last_error, claim"
_target_decoder = msgspec.json.Decoder(WebhookTarget)


def _delivery(row: tuple[Any, ...]) -> Delivery:
    """A row as a :class:`Delivery`: the ``id`` column holds its key (id and URL), or
    only its id in a row stored before keys existed."""
    fields = dict(zip(_COLUMNS.split(", "), row, strict=True))
    key = str(fields["id"])
    fields["id"] = key.split(" ", 1)[0]
    return Delivery(**fields, key=key)


class SqliteOutbox(Outbox):
    """The ``local`` backend's outbox: two tables in the hub's state file.

    It opens its own connection (WAL lets the hub's and this one share the
    file). One node owns a local state file, so claims left by a previous run
    of this node are released at start: the delivery is retried at once with
    the same ``webhook-id``.
    """

    def __init__(
        self,
        path: str,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_ms: int = 5000,
    ) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._clock = clock
        # How long a write waits for another connection's lock before it is a
        # BackendError ("database is locked"); the caller retries later.
        self.busy_timeout_ms = busy_timeout_ms

    async def start(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            # Release the claims of this node's previous run (killed mid-attempt).
            db.execute(
                "UPDATE webhook_deliveries SET claim = NULL, due_at = MIN(due_at, ?) "
                "WHERE claim IS NOT NULL",
                (self._clock(),),
            )
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open the webhook outbox in {self.path!r}: {exc}") from exc
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise BackendError("the webhook outbox is not started")
        return self._db

    def _write(self, statements: Sequence[tuple[str, Sequence[object]]]) -> list[int]:
        """Run statements in one transaction; each one's rowcount."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            counts = [db.execute(sql, params).rowcount for sql, params in statements]
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(db)
            raise BackendError(f"webhook outbox write failed: {exc}") from exc
        return counts

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise BackendError(f"webhook outbox read failed: {exc}") from exc

    async def register(self, task: str, target: WebhookTarget, mark: int) -> None:
        self._write(
            [
                (
                    "INSERT INTO webhook_targets VALUES (?, ?, ?) ON CONFLICT(task) "
                    "DO UPDATE SET target = excluded.target, mark = excluded.mark",
                    (task, msgspec.json.encode(target), mark),
                )
            ]
        )

    async def unregister(self, task: str) -> bool:
        [count] = self._write([("DELETE FROM webhook_targets WHERE task = ?", (task,))])
        return count > 0

    async def registrations(self, tasks: Sequence[str] | None = None) -> dict[str, Registration]:
        if tasks is None:
            rows = self._read("SELECT task, target, mark FROM webhook_targets")
        elif not tasks:
            return {}
        else:
            marks = ", ".join("?" * len(tasks))
            rows = self._read(
                f"SELECT task, target, mark FROM webhook_targets WHERE task IN ({marks})",
                tuple(tasks),
            )
        return {
            str(task): Registration(_target_decoder.decode(target), int(mark))
            for task, target, mark in rows
        }

    async def enqueue(
        self, task: str, deliveries: Sequence[Delivery], seq: int, *, done: bool
    ) -> int:
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT mark FROM webhook_targets WHERE task = ?", (task,)).fetchone()
            stored = 0
            if row is not None:
                mark = int(row[0])
                for d in deliveries:
                    if d.seq > mark:
                        stored += db.execute(
                            f"INSERT OR IGNORE INTO webhook_deliveries ({_COLUMNS}) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                            (
                                d.slot,
                                d.task,
                                d.seq,
                                d.url,
                                d.payload,
                                d.created_at,
                                d.due_at,
                                d.attempts,
                                d.last_error,
                            ),
                        ).rowcount
                if done:
                    db.execute("DELETE FROM webhook_targets WHERE task = ?", (task,))
                elif seq > mark:
                    db.execute("UPDATE webhook_targets SET mark = ? WHERE task = ?", (seq, task))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(db)
            raise BackendError(f"webhook outbox write failed: {exc}") from exc
        return stored

    async def claim(self, now: float, lease_until: float, limit: int, token: str) -> list[Delivery]:
        db = self.db
        try:
            rows = db.execute(
                f"UPDATE webhook_deliveries SET claim = ?, due_at = ? WHERE id IN "
                f"(SELECT id FROM webhook_deliveries WHERE due_at <= ? ORDER BY due_at LIMIT ?) "
                f"RETURNING {_COLUMNS}",
                (token, lease_until, now, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise BackendError(f"webhook outbox claim failed: {exc}") from exc
        return sorted((_delivery(row) for row in rows), key=lambda d: (d.task, d.seq))

    async def finish(self, delivery: Delivery) -> bool:
        [count] = self._write(
            [
                (
                    "DELETE FROM webhook_deliveries WHERE id = ? AND claim = ?",
                    (delivery.slot, delivery.claim),
                )
            ]
        )
        return count > 0

    async def retry(self, delivery: Delivery, due_at: float, error: str) -> bool:
        [count] = self._write(
            [
                (
                    "UPDATE webhook_deliveries SET claim = NULL, due_at = ?, "
                    "attempts = attempts + 1, last_error = ? WHERE id = ? AND claim = ?",
                    (due_at, error, delivery.slot, delivery.claim),
                )
            ]
        )
        return count > 0

    async def pending(self) -> int:
        [(count,)] = self._read("SELECT COUNT(*) FROM webhook_deliveries")
        return int(count)


def _rollback(db: sqlite3.Connection) -> None:
    """Undo a failed transaction; a failure to do so is the original error's business."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
