"""The PostgreSQL store (asyncpg): one database shared by any number of processes.

A small connection pool serves reads and commits; a batch of turns is one transaction on
one connection. The store behaves as the SQLite store does (same ordering, same rules for
what a batch writes), and adds what sharing needs: row locks and a lease check in the commit
fence, and a ``continuation_due`` notification that wakes other processes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Sequence
from collections.abc import Set as AbstractSet
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .._errors import StoreError
from .base import AuditRow, Commit, ContinuationRow, Lease, Refusal, actor_view, refused_turns
from .postgres_migrations import Connection, migrate
from .postgres_write import write
from .sqlite import Durability

logger = logging.getLogger("continuation")

CHANNEL: Final = "continuation_due"
"""The channel ``apply`` notifies with the earliest due time it stored (``repr`` of a float)
and ``listen`` listens on. Channels belong to the database, not the schema: stores on other
schemas of the same database hear these times too, and at worst look for due work early."""

_POOL_MIN: Final = 1
_POOL_MAX: Final = 4
_CONNECT_TIMEOUT: Final = 10.0
_LISTEN_RETRY_MAX: Final = 5.0  # seconds between attempts to listen again, at most
_DRIVER_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)

_COLUMNS: Final = (
    "id, binding, instance, strategy, status, chain, error_chain, chain_text, error_chain_text,"
    " options, retry, due_at, scheduled_at, attempts, last_error, last_traceback, created_at,"
    " updated_at, finished_at, key, cron, version, cancel_requested, revision, phase, work,"
    " outcome, wait_name"
)
# Locked until the commit: a concurrent cancel (or takeover) waits for this batch, and this
# batch waits for one already under way, then sees its result.
_REVISIONS: Final = (
    "SELECT id, revision FROM continuations WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
)
_LEASES: Final = """
    SELECT binding, instance, host, epoch,
        expires_at > extract(epoch FROM clock_timestamp()) AS live
    FROM leases
    WHERE (binding, instance) IN (SELECT * FROM unnest($1::text[], $2::text[]))
    ORDER BY binding, instance
    FOR SHARE
"""


class PostgresStore:
    """Actor state and continuations in a PostgreSQL database.

    Args:
        url: a ``postgresql://`` URL, passed to asyncpg as it is: query parameters it does
            not know become server settings, so ``?search_path=app`` keeps the tables in
            schema ``app``.
        durability: ``"full"`` (``synchronous_commit = on``) tells no one a commit happened
            before the server has flushed it to disk. ``"normal"`` (``synchronous_commit =
            off``) survives a crash of this process, as every commit reached the server, but
            a crash of the PostgreSQL server itself may lose the last commits (up to three
            times ``wal_writer_delay``, 0.6 s by default), for less waiting per commit.
    """

    def __init__(self, url: str, *, durability: Durability = "full") -> None:
        self._url = url
        self._durability = durability
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._listener: asyncpg.Connection[asyncpg.Record] | None = None
        self._channel = CHANNEL  # with the schema, once open
        self._hearers: list[Callable[[object, int, str, object], None]] = []
        self._relistening: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self._url)!r}, durability={self._durability!r})"

    @property
    def _what(self) -> str:
        return f"the database {redact(self._url)!r}"

    async def open(self) -> None:
        settings = {"synchronous_commit": "on" if self._durability == "full" else "off"}
        try:
            pool = await asyncpg.create_pool(
                self._url,
                min_size=_POOL_MIN,
                max_size=_POOL_MAX,
                timeout=_CONNECT_TIMEOUT,
                server_settings=settings,
                # The store leaves no session state behind (no SET, LISTEN or session lock),
                # so a released connection needs no reset: one round trip less per use.
                reset=_keep_session,
            )
        except Exception as exc:  # asyncpg raises OSError, ValueError and its own errors
            raise StoreError(f"cannot open {self._what}: {_one_line(exc)}") from exc
        try:
            async with pool.acquire() as connection:
                await migrate(connection, what=self._what)
                # Notifications reach the whole database: one channel per schema keeps the
                # systems of other schemas (tenants, tests) from waking for these commits.
                schema = await connection.fetchval("SELECT current_schema()")
                self._channel = f"{CHANNEL}:{schema}"
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, _DRIVER_ERRORS):
                raise StoreError(f"cannot open {self._what}: {_one_line(exc)}") from exc
            raise  # SchemaVersionError, or a cancellation
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        relistening, self._relistening = self._relistening, None
        if relistening is not None:
            relistening.cancel()
            await asyncio.gather(relistening, return_exceptions=True)
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        if pool is not None:
            await pool.close()

    async def listen(self, on_due: Callable[[float], None]) -> None:
        """Call ``on_due(time)`` whenever any process commits something due at ``time``
        (epoch seconds) to this database, until the store closes.

        The notifications arrive on a connection of their own, outside the pool; a payload
        that is not a time is logged and ignored, and so is an error raised by ``on_due``.
        Should that connection drop (the server restarted, say), it is opened again with
        capped backoff, and ``on_due(0.0)`` then says that anything may have fallen due
        while no one was listening.

        Raises:
            StoreError: the store is not open, or the connection failed.
        """
        if self._pool is None:
            raise StoreError("the store is closed")

        def heard(connection: object, pid: int, channel: str, payload: object) -> None:
            try:
                due = float(str(payload))
            except ValueError:
                due = math.nan
            if not math.isfinite(due):
                logger.warning("ignored a %s notification without a time: %r", channel, payload)
                return
            try:
                on_due(due)
            except Exception:
                logger.exception("a %s listener failed", channel)

        self._hearers.append(heard)
        try:
            await self._listen_on_new_connection()
        except _DRIVER_ERRORS as exc:
            self._hearers.remove(heard)
            raise StoreError(f"cannot listen on {self._what}: {_one_line(exc)}") from exc

    async def _listen_on_new_connection(self) -> None:
        if self._listener is None:
            listener = await asyncpg.connect(self._url, timeout=_CONNECT_TIMEOUT)
            listener.add_termination_listener(self._listener_lost)
            self._listener = listener
        for heard in self._hearers:
            await self._listener.add_listener(self._channel, heard)

    def _listener_lost(self, connection: object) -> None:
        if self._pool is None or connection is not self._listener:
            return  # closing
        self._listener = None
        logger.warning("the %s connection dropped; listening again", self._channel)
        self._relistening = asyncio.get_running_loop().create_task(self._listen_again())

    async def _listen_again(self) -> None:
        delay = 0.1
        while self._pool is not None:
            try:
                await self._listen_on_new_connection()
            except _DRIVER_ERRORS as exc:
                if self._listener is not None:
                    await self._listener.close()
                    self._listener = None
                logger.warning("listening on %s failed, again in %.1f s: %s",
                               self._channel, delay, _one_line(exc))  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, _LISTEN_RETRY_MAX)
                continue
            for heard in self._hearers:
                heard(self._listener, 0, self._channel, "0.0")  # missed meanwhile: look now
            return

    @property
    def pool(self) -> asyncpg.Pool[asyncpg.Record]:
        """The open store's connection pool, for code that keeps more tables in the same
        database (hosts and leases). Connections go back to it without a reset, so a user
        must leave no session state behind (``SET``, ``LISTEN``, session advisory locks).

        Raises:
            StoreError: the store is not open.
        """
        if self._pool is None:
            raise StoreError("the store is closed")
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        pool = self._pool
        if pool is None:
            raise StoreError("the store is closed")
        try:
            async with pool.acquire() as connection:
                yield connection
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"database error: {exc}") from exc

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection() as connection:
            return await connection.fetch(sql, *args)

    async def apply(self, commits: Sequence[Commit]) -> dict[int, Refusal]:
        async with self._connection() as connection, connection.transaction():
            refused = await _fence(connection, commits)
            accepted = [c for i, c in enumerate(commits) if i not in refused]
            due = await write(connection, accepted)
            if due is not None:
                await connection.execute("SELECT pg_notify($1, $2)", self._channel, repr(due))
        return refused

    async def load_actor(
        self, binding: str, instance: str
    ) -> tuple[dict[str, bytes], dict[str, str]]:
        sql = (
            "SELECT key, value, NULL::text FROM actor_state WHERE binding = $1 AND instance = $2"
            " UNION ALL SELECT key, NULL::bytea, id FROM continuations WHERE binding = $1"
            " AND instance = $2 AND status = 'pending' AND NOT cancel_requested"
            " AND key IS NOT NULL"
        )
        return actor_view(await self._fetch(sql, binding, instance))

    async def fetch_due(
        self, now: float, limit: int, *, skip: AbstractSet[str] = frozenset()
    ) -> list[ContinuationRow]:
        # Ids first, from the index alone; whole rows (chains and all) only for those taken.
        sql = (
            "SELECT id FROM continuations WHERE status = 'pending' AND due_at <= $1"
            " ORDER BY due_at, id LIMIT $2"
        )
        rows = await self._fetch(sql, now, limit + len(skip))
        ids = [cid for (cid,) in rows if cid not in skip][:limit]
        if not ids:
            return []
        sql = (
            f"SELECT {_COLUMNS} FROM continuations WHERE id = ANY($1::text[])"
            " AND status = 'pending' ORDER BY due_at, id"
        )
        return await self._rows(sql, ids)

    async def next_due(self, *, skip: AbstractSet[str] = frozenset()) -> float | None:
        if not skip:
            sql = "SELECT min(due_at) FROM continuations WHERE status = 'pending'"
            due = (await self._fetch(sql))[0][0]
            return None if due is None else float(due)
        sql = (
            "SELECT id, due_at FROM continuations WHERE status = 'pending'"
            " AND due_at IS NOT NULL ORDER BY due_at, id LIMIT $1"
        )
        rows = await self._fetch(sql, len(skip) + 1)
        return next((float(due) for cid, due in rows if cid not in skip), None)

    async def waiting(self, strategies: Sequence[str]) -> list[ContinuationRow]:
        sql = (
            f"SELECT {_COLUMNS} FROM continuations WHERE status = 'pending'"
            " AND phase = 'waiting' AND strategy = ANY($1::text[]) ORDER BY id"
        )
        return await self._rows(sql, list(strategies))

    async def call_result(self, binding: str, instance: str, key: str) -> bytes | None:
        sql = "SELECT outcome FROM call_results WHERE binding = $1 AND instance = $2 AND key = $3"
        rows = await self._fetch(sql, binding, instance, key)
        return rows[0][0] if rows else None

    async def rows(self, ids: Sequence[str]) -> list[ContinuationRow]:
        """The continuations with these ids, whatever their status, in id order."""
        sql = f"SELECT {_COLUMNS} FROM continuations WHERE id = ANY($1::text[]) ORDER BY id"
        return await self._rows(sql, list(ids))

    async def get(self, cid: str) -> ContinuationRow | None:
        rows = await self._rows(f"SELECT {_COLUMNS} FROM continuations WHERE id = $1", cid)
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
        for condition, value in (
            ("status = ANY(${}::text[])", None if statuses is None else list(statuses)),
            ("binding = ${}", binding),
            ("instance = ${}", instance),
        ):
            if value is not None:
                params.append(value)
                where.append(condition.format(len(params)))
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        params.append(limit)
        sql = (
            f"SELECT {_COLUMNS} FROM continuations{clause}"
            f" ORDER BY created_at, id LIMIT ${len(params)}"
        )
        return await self._rows(sql, *params)

    async def audit(self, cid: str) -> list[AuditRow]:
        sql = "SELECT at, event, detail FROM audit WHERE cid = $1 ORDER BY seq"
        return [AuditRow(*row) for row in await self._fetch(sql, cid)]

    async def purge(self, *, finished_before: float, statuses: Sequence[str]) -> int:
        doomed = "SELECT id FROM continuations WHERE status = ANY($1::text[]) AND finished_at < $2"
        async with self._connection() as connection, connection.transaction():
            await connection.execute(
                f"DELETE FROM audit WHERE cid IN ({doomed})", list(statuses), finished_before
            )
            await connection.execute("DELETE FROM call_results WHERE at < $1", finished_before)
            deleted: int = await connection.fetchval(
                f"WITH gone AS (DELETE FROM continuations WHERE id IN ({doomed}) RETURNING 1)"
                " SELECT count(*) FROM gone",
                list(statuses),
                finished_before,
            )
        return deleted

    async def _rows(self, sql: str, *args: Any) -> list[ContinuationRow]:
        return [ContinuationRow(*row) for row in await self._fetch(sql, *args)]


async def _fence(connection: Connection, commits: Sequence[Commit]) -> dict[int, Refusal]:
    """The turns to refuse: one run under a lease it no longer holds, one whose fired
    continuation changed since it was read, and the later turns of their actors (see
    ``refused_turns``)."""
    refused = await _lease_fence(connection, commits)
    ids = list({c.update.id for c in commits if c.update is not None})
    revisions: dict[str, int] = {}
    if ids:
        rows = await connection.fetch(_REVISIONS, ids)
        revisions = {row["id"]: row["revision"] for row in rows}
    return refused_turns(commits, revisions, refused)


async def _lease_fence(connection: Connection, commits: Sequence[Commit]) -> dict[int, Refusal]:
    """The turns whose lease is not the current, unexpired one of their actor.

    The lease rows are locked for share until the commit, so a host taking an actor over
    (an ``UPDATE`` of its lease) waits for a batch already past this check.
    """
    leased = [
        (i, c.binding, c.instance, c.lease) for i, c in enumerate(commits) if c.lease is not None
    ]
    if not leased:
        return {}
    actors = sorted({(b, i) for _, b, i, _ in leased})
    rows = await connection.fetch(_LEASES, [b for b, _ in actors], [i for _, i in actors])
    held = {(r["binding"], r["instance"]): Lease(r["host"], r["epoch"]) for r in rows if r["live"]}
    return {
        index: Refusal.LEASE_LOST
        for index, binding, instance, lease in leased
        if held.get((binding, instance)) != lease
    }


async def _keep_session(connection: object) -> None:
    """The pool's reset: nothing to undo (asyncpg still rolls back an open transaction)."""


def redact(url: str) -> str:
    """``url`` without its password (in the address or as a parameter), for messages and
    ``repr``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
