"""The bouncer's SQLite store (aiosqlite, WAL, ``synchronous=FULL``).

Writes go through one writer task that groups whatever is queued into one transaction (group
commit), so thousands of registrations or delivery outcomes cost a few fsyncs, not thousands.
A write's caller is answered only after its transaction is durable. Reads use a second
connection: in WAL mode they never wait for a commit's fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import aiosqlite

from ..._errors import StoreError
from ..._store.connect import open_sqlite
from .._records import NewWait, Outcome, Wait, WaitStatus
from .migrations import MIGRATIONS

T = TypeVar("T")
Operation = Callable[[aiosqlite.Connection], Awaitable[T]]

_COLUMNS: Final = (
    "id, key, callback, payload, due_at, next_at, status, attempts, last_error, created_at,"
    " updated_at, finished_at"
)
_INSERT: Final = (
    "INSERT OR IGNORE INTO waits (id, key, callback, payload, due_at, next_at, status,"
    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)"
)
_RECORD: Final = (
    "UPDATE waits SET status = ?, next_at = ?, attempts = ?, last_error = ?, updated_at = ?,"
    " finished_at = ? WHERE id = ? AND status = 'pending'"
)
_CANCEL: Final = (
    "UPDATE waits SET status = 'cancelled', next_at = NULL, updated_at = ?, finished_at = ?"
    " WHERE id = ? AND status = 'pending'"
)


@dataclass(frozen=True, slots=True)
class _Write(Generic[T]):
    operation: Operation[T]
    future: asyncio.Future[T]


class WaitStore:
    """Waits in one SQLite file (or ``":memory:"``, for tests).

    Args:
        path: the database file.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._queue: list[_Write[Any]] = []
        self._queued = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    def __repr__(self) -> str:
        return f"WaitStore({self._path!r})"

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (creating or upgrading) the database and start the writer."""
        self._db, self._reader = await open_sqlite(
            self._path,
            synchronous="FULL",
            migrations=MIGRATIONS,
            what=f"the bouncer database {self._path!r}",
        )
        self._writer = asyncio.get_running_loop().create_task(
            self._write_loop(), name="bouncer-store-writer"
        )

    async def close(self) -> None:
        """Finish the queued writes, then close; idempotent."""
        writer, self._writer = self._writer, None
        if writer is not None:
            self._closing = True
            self._queued.set()
            await writer
        db, self._db = self._db, None
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()
        if db is not None:
            async with self._lock:
                await db.close()

    # -- writes ----------------------------------------------------------------------------

    async def insert(self, wait: NewWait, next_at: float) -> tuple[Wait, bool]:
        """Insert ``wait``; if a live wait already holds its key, return that one instead.

        Returns:
            the stored wait, and whether it was created by this call.
        """

        async def operation(db: aiosqlite.Connection) -> tuple[Wait, bool]:
            params = (wait.id, wait.key, wait.callback, wait.payload, wait.due_at, next_at)
            cursor = await db.execute(_INSERT, (*params, wait.created_at, wait.created_at))
            created = cursor.rowcount == 1
            if created:
                sql, value = f"SELECT {_COLUMNS} FROM waits WHERE id = ?", wait.id
            else:
                sql = f"SELECT {_COLUMNS} FROM waits WHERE key = ? AND status != 'cancelled'"
                value = wait.key or ""
            rows = await db.execute_fetchall(sql, (value,))
            return _wait(next(iter(rows))), created

        return await self._write(operation)

    async def cancel(self, wait_id: str, now: float) -> bool:
        """Cancel a pending wait; ``False`` if it is not pending (or does not exist)."""

        async def operation(db: aiosqlite.Connection) -> bool:
            cursor = await db.execute(_CANCEL, (now, now, wait_id))
            return cursor.rowcount == 1

        return await self._write(operation)

    async def record(self, outcome: Outcome) -> None:
        """Record a delivery attempt's outcome (only if the wait is still pending)."""
        finished = None if outcome.status == WaitStatus.PENDING else outcome.at
        params = (
            outcome.status.value,
            outcome.next_at,
            outcome.attempts,
            outcome.last_error,
            outcome.at,
            finished,
            outcome.id,
        )

        async def operation(db: aiosqlite.Connection) -> None:
            await db.execute(_RECORD, params)

        await self._write(operation)

    async def _write(self, operation: Operation[T]) -> T:
        if self._writer is None:
            raise StoreError("the bouncer store is not open")
        write: _Write[T] = _Write(operation, asyncio.get_running_loop().create_future())
        self._queue.append(write)
        self._queued.set()
        return await write.future

    async def _write_loop(self) -> None:
        while not (self._closing and not self._queue):
            await self._queued.wait()
            self._queued.clear()
            batch, self._queue = self._queue, []
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[_Write[Any]]) -> None:
        """Run ``batch`` in one transaction; if it fails, run each write in its own, so one
        bad write fails alone."""
        try:
            results = await self._transaction([write.operation for write in batch])
        except sqlite3.Error as exc:
            if len(batch) > 1:
                for write in batch:
                    await self._commit([write])
                return
            error = StoreError(f"the bouncer database refused a write: {exc}")
            error.__cause__ = exc
            _fail(batch, error)
            return
        except Exception as exc:  # pragma: no cover - an operation's own bug, reported to it
            _fail(batch, exc)
            return
        for write, result in zip(batch, results, strict=True):
            if not write.future.done():
                write.future.set_result(result)

    async def _transaction(self, operations: Sequence[Operation[Any]]) -> list[Any]:
        db = self._connection()
        async with self._lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                results = [await operation(db) for operation in operations]
                await db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                raise
        return results

    # -- reads -----------------------------------------------------------------------------

    async def get(self, wait_id: str) -> Wait | None:
        """The wait with that id, if any."""
        rows = await self._read(f"SELECT {_COLUMNS} FROM waits WHERE id = ?", (wait_id,))
        return _wait(rows[0]) if rows else None

    async def fetch_due(
        self, now: float, limit: int, *, skip: AbstractSet[str] = frozenset()
    ) -> list[Wait]:
        """Up to ``limit`` pending waits whose next attempt is due at ``now``, earliest first,
        leaving out the ids in ``skip`` (already being delivered)."""
        # Ids first, from the index alone; whole rows (payloads and all) only for those taken.
        sql = (
            "SELECT id FROM waits INDEXED BY waits_next"
            " WHERE status = 'pending' AND next_at <= ? ORDER BY next_at, id LIMIT ?"
        )
        rows = await self._read(sql, (now, limit + len(skip)))
        ids = [wait_id for (wait_id,) in rows if wait_id not in skip][:limit]
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        sql = f"SELECT {_COLUMNS} FROM waits WHERE id IN ({marks}) AND status = 'pending'"
        waits = [_wait(row) for row in await self._read(sql, ids)]
        return sorted(waits, key=lambda wait: (wait.next_at or 0.0, wait.id))

    async def next_due(self, *, skip: AbstractSet[str] = frozenset()) -> float | None:
        """When the earliest pending attempt not in ``skip`` is due, or ``None``."""
        sql = (
            "SELECT id, next_at FROM waits INDEXED BY waits_next"
            " WHERE status = 'pending' ORDER BY next_at, id LIMIT ?"
        )
        rows = await self._read(sql, (len(skip) + 1,))
        return next((float(due) for wait_id, due in rows if wait_id not in skip), None)

    async def counts(self) -> dict[str, int]:
        """How many waits are in each status."""
        rows = await self._read("SELECT status, COUNT(*) FROM waits GROUP BY status")
        return {str(status): int(count) for status, count in rows}

    async def _read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        try:
            if self._reader is not None:
                return list(await self._reader.execute_fetchall(sql, tuple(params)))
            db = self._connection()
            async with self._lock:
                return list(await db.execute_fetchall(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise StoreError(f"reading the bouncer database failed: {exc}") from exc

    def _connection(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the bouncer store is not open")
        return self._db


def _wait(row: Sequence[Any]) -> Wait:
    return Wait(
        id=row[0],
        key=row[1],
        callback=row[2],
        payload=row[3],
        due_at=float(row[4]),
        next_at=None if row[5] is None else float(row[5]),
        status=WaitStatus(row[6]),
        attempts=int(row[7]),
        last_error=row[8],
        created_at=float(row[9]),
        updated_at=float(row[10]),
        finished_at=None if row[11] is None else float(row[11]),
    )


def _fail(batch: Iterable[_Write[Any]], exc: Exception) -> None:
    for write in batch:
        if not write.future.done():
            write.future.set_exception(exc)
