"""The SQLite store (aiosqlite, WAL): the embedded default.

One connection, and one lock around every use of it, so a read never sees a half-applied
batch. A batch of turns is one ``BEGIN IMMEDIATE ... COMMIT``; with ``durability="full"``
the commit is fsynced before anyone is told it happened.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from collections.abc import Set as AbstractSet
from contextlib import asynccontextmanager
from typing import Any, Final, Literal

import aiosqlite

from .._errors import StoreError
from .base import AuditRow, Commit, ContinuationRow, Refusal, SignalSend
from .connect import open_sqlite
from .migrations import MIGRATIONS

Durability = Literal["full", "normal"]

_COLUMNS: Final = (
    "id, binding, instance, strategy, status, chain, error_chain, chain_text, error_chain_text,"
    " options, retry, due_at, scheduled_at, attempts, last_error, last_traceback, created_at,"
    " updated_at, finished_at, key, cron, version, cancel_requested, revision, phase, work,"
    " outcome, wait_name"
)
_INSERT_CONTINUATION: Final = (
    "INSERT INTO continuations (id, binding, instance, strategy, status, chain, error_chain,"
    " chain_text, error_chain_text, options, retry, due_at, scheduled_at, created_at,"
    " updated_at, key, cron, version, phase, work, wait_name) VALUES (?, ?, ?, ?, 'pending', ?,"
    " ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_CONTINUATION: Final = (
    "UPDATE continuations SET status = ?, due_at = ?, scheduled_at = ?, attempts = ?,"
    " last_error = ?, last_traceback = ?, finished_at = ?, cancel_requested = ?, updated_at = ?,"
    " phase = ?, outcome = ?, revision = revision + 1 WHERE id = ?"
)
_READY: Final = (
    "UPDATE continuations SET phase = 'ready', outcome = ?, due_at = ?, updated_at = ?,"
    " revision = revision + 1 WHERE id = ?"
)
_OWN_PENDING: Final = "id = ? AND binding = ? AND instance = ? AND status = 'pending'"
_CANCEL_STATEMENTS: Final = (
    # A continuation with an error chain stays pending until ContinuationCancelled reaches it.
    "INSERT INTO audit (cid, at, event, detail) SELECT id, ?, 'cancel requested', NULL"
    f" FROM continuations WHERE {_OWN_PENDING} AND cancel_requested = 0"
    " AND error_chain IS NOT NULL",
    "UPDATE continuations SET cancel_requested = 1, attempts = 0, due_at = ?, updated_at = ?,"
    f" revision = revision + 1 WHERE {_OWN_PENDING} AND cancel_requested = 0"
    " AND error_chain IS NOT NULL",
    "INSERT INTO audit (cid, at, event, detail) SELECT id, ?, 'cancelled', NULL"
    f" FROM continuations WHERE {_OWN_PENDING} AND error_chain IS NULL",
    "UPDATE continuations SET status = 'cancelled', due_at = NULL, finished_at = ?,"
    f" updated_at = ?, revision = revision + 1 WHERE {_OWN_PENDING} AND error_chain IS NULL",
)
_FENCE_CHUNK: Final = 500


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
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r}, durability={self._durability!r})"

    async def open(self) -> None:
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
            async with self._lock:
                await db.close()

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
        async with self._lock:
            if self._db is None:
                raise StoreError("the store is closed")
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StoreError(f"database error: {exc}") from exc

    async def apply(self, commits: Sequence[Commit]) -> dict[int, Refusal]:
        async with self._connection() as db:
            await db.execute("BEGIN IMMEDIATE")
            try:
                refused = await self._fence(db, commits)
                accepted = [c for i, c in enumerate(commits) if i not in refused]
                await _write(db, accepted)
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        return dict.fromkeys(refused, Refusal.CHANGED)

    async def _fence(self, db: aiosqlite.Connection, commits: Sequence[Commit]) -> set[int]:
        expected = {c.update.id: i for i, c in enumerate(commits) if c.update is not None}
        if not expected:
            return set()
        revisions: dict[str, int] = {}
        ids = list(expected)
        for start in range(0, len(ids), _FENCE_CHUNK):
            chunk = ids[start : start + _FENCE_CHUNK]
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT id, revision FROM continuations WHERE id IN ({marks})"
            async with db.execute(sql, chunk) as cursor:
                revisions.update({row[0]: row[1] async for row in cursor})
        refused = set()
        for cid, index in expected.items():
            update = commits[index].update
            assert update is not None
            if revisions.get(cid) != update.revision:
                refused.add(index)
        if refused:
            # Later turns of a refused turn's actor ran on its effects: refuse them too.
            actors = set()
            for index, commit in enumerate(commits):
                actor = (commit.binding, commit.instance)
                if index in refused:
                    if not commit.standalone:
                        actors.add(actor)
                elif actor in actors:
                    refused.add(index)
        return refused

    async def load_state(self, binding: str, instance: str) -> dict[str, bytes]:
        sql = "SELECT key, value FROM actor_state WHERE binding = ? AND instance = ?"
        return {row[0]: bytes(row[1]) for row in await self._read(sql, (binding, instance))}

    async def load_keys(self, binding: str, instance: str) -> dict[str, str]:
        sql = (
            "SELECT key, id FROM continuations WHERE binding = ? AND instance = ?"
            " AND status = 'pending' AND cancel_requested = 0 AND key IS NOT NULL"
        )
        return {row[0]: row[1] for row in await self._read(sql, (binding, instance))}

    async def fetch_due(
        self, now: float, limit: int, *, skip: AbstractSet[str] = frozenset()
    ) -> list[ContinuationRow]:
        # Ids first, from the index alone; whole rows (chains and all) only for those taken.
        sql = (
            "SELECT id FROM continuations INDEXED BY continuations_due"
            " WHERE status = 'pending' AND due_at <= ? ORDER BY due_at, id LIMIT ?"
        )
        ids = [cid for (cid,) in await self._read(sql, (now, limit + len(skip))) if cid not in skip]
        if not ids:
            return []
        ids = ids[:limit]
        marks = ", ".join("?" * len(ids))
        sql = f"SELECT {_COLUMNS} FROM continuations WHERE id IN ({marks}) AND status = 'pending'"
        rows = await self._rows(sql, ids)
        return sorted(rows, key=lambda row: (row.due_at or 0.0, row.id))

    async def next_due(self, *, skip: AbstractSet[str] = frozenset()) -> float | None:
        if not skip:
            sql = (
                "SELECT MIN(due_at) FROM continuations INDEXED BY continuations_due"
                " WHERE status = 'pending'"
            )
            [(due,)] = await self._read(sql)
            return None if due is None else float(due)
        sql = (
            "SELECT id, due_at FROM continuations INDEXED BY continuations_due"
            " WHERE status = 'pending' AND due_at IS NOT NULL ORDER BY due_at, id LIMIT ?"
        )
        rows = await self._read(sql, (len(skip) + 1,))
        return next((float(due) for cid, due in rows if cid not in skip), None)

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
        marks = ", ".join("?" * len(statuses))
        doomed = f"SELECT id FROM continuations WHERE status IN ({marks}) AND finished_at < ?"
        params = (*statuses, finished_before)
        async with self._connection() as db:
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.execute(f"DELETE FROM audit WHERE cid IN ({doomed})", params)
                await db.execute("DELETE FROM call_results WHERE at < ?", (finished_before,))
                cursor = await db.execute(
                    f"DELETE FROM continuations WHERE id IN ({doomed})", params
                )
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        return cursor.rowcount

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


async def _write(db: aiosqlite.Connection, commits: Sequence[Commit]) -> None:
    """Apply the effects of ``commits`` as if one after another.

    Statements are grouped by kind for ``executemany``, so the order of kinds matters:
    storage (the last write of a key wins), updates of fired continuations (which free their
    dedup keys), new continuations, then cancellations (which may target new ones).
    """
    state: dict[tuple[str, str, str], bytes | None] = {}
    inserts: list[tuple[Any, ...]] = []
    updates: list[tuple[Any, ...]] = []
    events: list[tuple[str, float, str, str | None]] = []
    cancels: list[tuple[Any, ...]] = []
    waiters: list[tuple[str, str, str, str, float]] = []
    signals: list[tuple[SignalSend, float]] = []
    results: list[tuple[str, str, str, bytes, float]] = []
    rewaits: list[tuple[str, float]] = []
    for commit in commits:
        b, i, now = commit.binding, commit.instance, commit.now
        for key, value in commit.writes.items():
            state[b, i, key] = value
        for new in commit.new:
            inserts.append(
                (new.id, new.binding, new.instance, new.strategy, new.chain, new.error_chain,
                 new.chain_text, new.error_chain_text, new.options, new.retry, new.due_at,
                 now if new.due_at is None else new.due_at, now, now, new.key, new.cron,
                 new.version, new.phase, new.work,
                 new.wait_name)
            )  # fmt: skip
            if new.wait_name is not None:
                waiters.append((new.id, new.binding, new.instance, new.wait_name, now))
        update = commit.update
        if update is not None:
            updates.append(
                (update.status, update.due_at, update.scheduled_at, update.attempts,
                 update.last_error, update.last_traceback, update.finished_at,
                 int(update.cancel_requested), now, update.phase, update.outcome, update.id)
            )  # fmt: skip
            events.extend((update.id, now, event, detail) for event, detail in update.events)
            if update.phase == "waiting" and update.status == "pending":
                rewaits.append((update.id, now))
        cancels.extend((now, cid, b, i) for cid in commit.cancels)
        signals.extend((signal, now) for signal in commit.signals)
        if commit.call_result is not None:
            results.append((b, i, *commit.call_result, now))
        events.extend((cid, now, event, detail) for cid, event, detail in commit.notes)
    deletes = [key for key, value in state.items() if value is None]
    puts = [(*key, value) for key, value in state.items() if value is not None]
    if deletes:
        await db.executemany(
            "DELETE FROM actor_state WHERE binding = ? AND instance = ? AND key = ?", deletes
        )
    if puts:
        await db.executemany(
            "INSERT INTO actor_state (binding, instance, key, value) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (binding, instance, key) DO UPDATE SET value = excluded.value",
            puts,
        )
    if updates:
        await db.executemany(_UPDATE_CONTINUATION, updates)
    if inserts:
        await db.executemany(_INSERT_CONTINUATION, inserts)
    if results:
        await db.executemany(
            "INSERT OR REPLACE INTO call_results (binding, instance, key, outcome, at)"
            " VALUES (?, ?, ?, ?, ?)",
            results,
        )
    for cid, now in rewaits:
        # A signal waiter waiting again (after a timeout, or a retry) takes what arrived
        # in between, as a new waiter would.
        sql = "SELECT binding, instance, wait_name FROM continuations WHERE id = ?"
        async with db.execute(sql, (cid,)) as cursor:
            found = await cursor.fetchone()
        if found is not None and found[2] is not None:
            waiters.append((cid, found[0], found[1], found[2], now))
    for waiter in waiters:
        await _take_buffered_signal(db, *waiter)
    for signal, now in signals:
        await _send_signal(db, signal, now)
    if events:
        await db.executemany(
            "INSERT INTO audit (cid, at, event, detail) VALUES (?, ?, ?, ?)", events
        )
    for statement in _CANCEL_STATEMENTS:
        if cancels:
            times = 1 if statement.startswith("INSERT") else 2
            await db.executemany(statement, [(*(c[0],) * times, *c[1:]) for c in cancels])


async def _take_buffered_signal(
    db: aiosqlite.Connection, cid: str, binding: str, instance: str, name: str, now: float
) -> None:
    """A new signal continuation takes the oldest signal that arrived before it waited."""
    sql = (
        "SELECT seq, payload FROM signals INDEXED BY signals_waiting"
        " WHERE binding = ? AND instance = ? AND name = ? ORDER BY seq LIMIT 1"
    )
    async with db.execute(sql, (binding, instance, name)) as cursor:
        found = await cursor.fetchone()
    if found is None:
        return
    await db.execute("DELETE FROM signals WHERE seq = ?", (found[0],))
    await db.execute(_READY, (found[1], now, now, cid))
    await db.execute(
        "INSERT INTO audit (cid, at, event, detail) VALUES (?, ?, 'signal received', ?)",
        (cid, now, f"{name!r}, sent before the wait began"),
    )


async def _send_signal(db: aiosqlite.Connection, signal: SignalSend, now: float) -> None:
    """Deliver a signal to the oldest continuation waiting for it, or buffer it."""
    sql = (
        "SELECT id FROM continuations INDEXED BY continuations_signal WHERE binding = ?"
        " AND instance = ? AND wait_name = ? AND status = 'pending' AND phase = 'waiting'"
        " AND cancel_requested = 0 ORDER BY id LIMIT 1"
    )
    async with db.execute(sql, (signal.binding, signal.instance, signal.name)) as cursor:
        found = await cursor.fetchone()
    if found is None:
        await db.execute(
            "INSERT INTO signals (binding, instance, name, payload, at) VALUES (?, ?, ?, ?, ?)",
            (signal.binding, signal.instance, signal.name, signal.payload, now),
        )
        return
    await db.execute(_READY, (signal.payload, now, now, found[0]))
    await db.execute(
        "INSERT INTO audit (cid, at, event, detail) VALUES (?, ?, 'signal received', ?)",
        (found[0], now, repr(signal.name)),
    )
