"""The SQLite store (aiosqlite, WAL): the embedded default.

A writer connection and a reader (WAL): a read sees only committed data. Everything the
writer does is one call on its thread, run in the order queued: a batch of turns is one
``BEGIN IMMEDIATE ... COMMIT`` in one call, so nothing needs a lock held across event-loop
rounds (one held while a call's answer waits for a busy loop delayed every commit behind
it). With ``durability="full"`` a commit is fsynced before anyone is told it happened.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from collections.abc import Set as AbstractSet
from contextlib import asynccontextmanager
from typing import Any, Final, Literal

import aiosqlite
import orjson

from .._errors import StoreError
from .base import AuditRow, Commit, ContinuationRow, Refusal, actor_view
from .connect import on_writer_thread, open_sqlite
from .migrations import MIGRATIONS
from .sqlite_write import purge_finished, write_batch

Durability = Literal["full", "normal"]

_COLUMNS: Final = (
    "id, binding, instance, strategy, status, chain, error_chain, chain_text, error_chain_text,"
    " options, retry, due_at, scheduled_at, attempts, last_error, last_traceback, created_at,"
    " updated_at, finished_at, key, cron, version, cancel_requested, revision, phase, work,"
    " outcome, wait_name"
)

_NOT_SKIPPED: Final = "id NOT IN (SELECT value FROM json_each(?))"


def _check_sqlite() -> None:
    """Refuse an SQLite without what the queries here use: ``UPDATE ... FROM`` (3.33) and
    the JSON functions (built in since 3.38, an option before)."""
    if sqlite3.sqlite_version_info < (3, 33):
        raise StoreError(f"SQLite 3.33 or newer is needed, not {sqlite3.sqlite_version}")
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        try:
            db.execute("SELECT value FROM json_each('[]')")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"this SQLite has no JSON functions ({exc})") from None


def _skipped(skip: AbstractSet[str]) -> str:
    """The ids to leave out, as the JSON array that ``_NOT_SKIPPED`` reads."""
    return orjson.dumps(list(skip)).decode()


class SQLiteStore:
    """Actor state and continuations in one SQLite file (or ``":memory:"``).

    Args:
        path: the database file.
        durability: ``"full"`` fsyncs every commit; ``"normal"`` (WAL with
            ``synchronous=NORMAL``) survives a process crash but may lose the last commits
            on power loss.
    """

    def __init__(self, path: str, *, durability: Durability = "full") -> None:
        self._path = path
        self._durability = durability
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r}, durability={self._durability!r})"

    async def open(self) -> None:
        _check_sqlite()
        synchronous = "FULL" if self._durability == "full" else "NORMAL"
        self._db, self._reader = await open_sqlite(
            self._path,
            synchronous=synchronous,
            migrations=MIGRATIONS,
            what=f"the database {self._path!r}",
        )

    async def close(self) -> None:
        db, self._db = self._db, None
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()
        if db is not None:
            await db.close()  # after the calls already queued, which finish first

    async def _read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """All rows of a query, read on the reader connection when there is one; a read
        sees only committed data."""
        reader = self._reader
        if reader is None:
            async with self._connection() as db:
                return list(await db.execute_fetchall(sql, tuple(params)))
        if self._db is None:
            raise StoreError("the store is closed")
        try:
            return list(await reader.execute_fetchall(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer, for one call on its thread (see the module's docstring)."""
        if self._db is None:
            raise StoreError("the store is closed")
        try:
            yield self._db
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc

    async def apply(self, commits: Sequence[Commit]) -> dict[int, Refusal]:
        async with self._connection() as db:
            refused = await on_writer_thread(db, write_batch, commits)
        return dict.fromkeys(refused, Refusal.CHANGED)

    async def load_actor(
        self, binding: str, instance: str
    ) -> tuple[dict[str, bytes], dict[str, str]]:
        sql = (
            "SELECT key, value, NULL FROM actor_state WHERE binding = ?1 AND instance = ?2"
            " UNION ALL SELECT key, NULL, id FROM continuations WHERE binding = ?1"
            " AND instance = ?2 AND status = 'pending' AND cancel_requested = 0"
            " AND key IS NOT NULL"
        )
        return actor_view(await self._read(sql, (binding, instance)))

    async def fetch_due(
        self, now: float, limit: int, *, skip: AbstractSet[str] = frozenset()
    ) -> list[ContinuationRow]:
        # The skipped ids (up to thousands, all firing) are left out by SQLite itself: every
        # row a query returns makes this thread and the event loop's trade the GIL.
        sql = (
            f"SELECT {_COLUMNS} FROM continuations INDEXED BY continuations_due"
            f" WHERE status = 'pending' AND due_at <= ? AND {_NOT_SKIPPED}"
            " ORDER BY due_at, id LIMIT ?"
        )
        return await self._rows(sql, (now, _skipped(skip), limit))

    async def next_due(self, *, skip: AbstractSet[str] = frozenset()) -> float | None:
        sql = (
            "SELECT due_at FROM continuations INDEXED BY continuations_due"
            f" WHERE status = 'pending' AND due_at IS NOT NULL AND {_NOT_SKIPPED}"
            " ORDER BY due_at, id LIMIT 1"
        )
        found = await self._read(sql, (_skipped(skip),))
        return float(found[0][0]) if found else None

    async def waiting(self, strategies: Sequence[str]) -> list[ContinuationRow]:
        marks = ", ".join("?" * len(strategies))
        sql = (
            f"SELECT {_COLUMNS} FROM continuations INDEXED BY continuations_waiting"
            f" WHERE status = 'pending' AND phase = 'waiting' AND strategy IN ({marks})"
            " ORDER BY id"
        )
        return await self._rows(sql, strategies)

    async def call_result(self, binding: str, instance: str, key: str) -> bytes | None:
        sql = "SELECT outcome FROM call_results WHERE binding = ? AND instance = ? AND key = ?"
        rows = await self._read(sql, (binding, instance, key))
        return bytes(rows[0][0]) if rows else None

    async def get(self, cid: str) -> ContinuationRow | None:
        rows = await self._rows(f"SELECT {_COLUMNS} FROM continuations WHERE id = ?", (cid,))
        return rows[0] if rows else None

    async def find(
        self,
        *,
        statuses: Sequence[str] | None,
        binding: str | None,
        instance: str | None,
        limit: int,
    ) -> list[ContinuationRow]:
        where: list[str] = []
        params: list[Any] = []
        if statuses is not None:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        for column, value in (("binding", binding), ("instance", instance)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {_COLUMNS} FROM continuations{clause} ORDER BY created_at, id LIMIT ?"
        return await self._rows(sql, (*params, limit))

    async def audit(self, cid: str) -> list[AuditRow]:
        sql = "SELECT at, event, detail FROM audit WHERE cid = ? ORDER BY seq"
        return [AuditRow(*row) for row in await self._read(sql, (cid,))]

    async def purge(self, *, finished_before: float, statuses: Sequence[str]) -> int:
        async with self._connection() as db:
            return await on_writer_thread(db, purge_finished, (finished_before, tuple(statuses)))

    async def _rows(self, sql: str, params: Iterable[Any]) -> list[ContinuationRow]:
        return [_row(values) for values in await self._read(sql, params)]


def _row(values: Any) -> ContinuationRow:
    row = ContinuationRow(*values)
    row.chain = bytes(row.chain)
    row.error_chain = None if row.error_chain is None else bytes(row.error_chain)
    row.cancel_requested = bool(row.cancel_requested)
    row.work = None if row.work is None else bytes(row.work)
    row.outcome = None if row.outcome is None else bytes(row.outcome)
    return row
