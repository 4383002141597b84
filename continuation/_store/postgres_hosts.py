"""Hosts sharing one PostgreSQL database: their registry, their leases on actors, and the
claiming of due and waiting continuations.

Every time here is the database's clock (``clock_timestamp()`` as epoch seconds), so hosts
whose clocks disagree still agree on when a lease expires. A lease is renewed in bulk (one
statement per host, not per actor) and given up by setting its expiry to zero: the row and
its epoch stay, so the next holder's epoch is always higher than any before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import orjson

from .base import ActorKey, Holder, Lease
from .postgres_migrations import Connection

NOW: Final = "extract(epoch from clock_timestamp())::float8"


@dataclass(frozen=True, slots=True)
class HostRow:
    """One host, as registered."""

    id: str
    address: str | None
    started_at: float
    heartbeat_at: float
    expires_at: float
    stopped_at: float | None
    status: dict[str, Any]
    leases: int
    now: float

    @property
    def state(self) -> str:
        """``"stopped"``, ``"alive"``, or ``"lost"`` (its heartbeat stopped: it died or
        stalled, and its leases are up for the taking)."""
        if self.stopped_at is not None:
            return "stopped"
        return "alive" if self.expires_at > self.now else "lost"


# Only leases that are free, expired or already this host's are taken: the rows of an
# actor leased by a live host are left to that host.
_CLAIMABLE: Final = f"""
    (l.host IS NULL OR l.host = $1 OR l.expires_at <= {NOW})
"""


class HostDirectory:
    """The hosts, leases and claims of one database, over a connection pool."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool

    async def register(self, host: str, address: str | None, ttl: float) -> None:
        """Announce ``host`` (again, after a restart) as alive, reachable at ``address``."""
        await self._pool.execute(
            f"""
            INSERT INTO hosts (id, address, started_at, heartbeat_at, expires_at)
            VALUES ($1, $2, {NOW}, {NOW}, {NOW} + $3)
            ON CONFLICT (id) DO UPDATE SET address = excluded.address,
                started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
                expires_at = excluded.expires_at, stopped_at = NULL, status = '{{}}'
            """,
            host,
            address,
            ttl,
        )

    async def stop(self, host: str) -> None:
        """Mark ``host`` stopped and give up all its leases."""
        async with self._pool.acquire() as db, db.transaction():
            await db.execute("UPDATE leases SET expires_at = 0 WHERE host = $1", host)
            await db.execute(
                f"UPDATE hosts SET stopped_at = {NOW}, expires_at = {NOW} WHERE id = $1", host
            )

    async def renew(self, host: str, ttl: float) -> dict[ActorKey, int]:
        """Extend ``host``'s heartbeat and every lease it still holds; return those leases
        with their epochs. A lease that expired is not renewed: another host may have
        taken it, or will, and this host must reload the actor before trusting it again."""
        async with self._pool.acquire() as db, db.transaction():
            await db.execute(
                f"UPDATE hosts SET heartbeat_at = {NOW}, expires_at = {NOW} + $2 WHERE id = $1",
                host,
                ttl,
            )
            # Rows are locked in key order, as claims take them, so the two cannot deadlock.
            rows = await db.fetch(
                f"""
                UPDATE leases SET expires_at = {NOW} + $2
                WHERE (binding, instance) IN (
                    SELECT binding, instance FROM leases
                    WHERE host = $1 AND expires_at > {NOW}
                    ORDER BY binding, instance FOR UPDATE)
                RETURNING binding, instance, epoch
                """,
                host,
                ttl,
            )
        return {(row[0], row[1]): row[2] for row in rows}

    async def report(self, host: str, status: Mapping[str, Any]) -> None:
        """Store ``host``'s latest status report (JSON)."""
        await self._pool.execute(
            "UPDATE hosts SET status = $2::jsonb WHERE id = $1",
            host,
            orjson.dumps(dict(status)).decode(),
        )

    async def acquire(self, host: str, binding: str, instance: str, ttl: float) -> Lease | Holder:
        """Take the lease on one actor (a new epoch) unless another live host holds it."""
        for _ in range(3):  # the holder's lease may expire between the two statements
            async with self._pool.acquire() as db:
                taken = await self._take(db, host, ttl, {(binding, instance)}, retake_own=True)
                if taken:
                    return Lease(host, taken[binding, instance])
                row = await db.fetchrow(
                    f"SELECT l.host, h.address, l.expires_at - {NOW} FROM leases l"
                    " LEFT JOIN hosts h ON h.id = l.host"
                    " WHERE l.binding = $1 AND l.instance = $2",
                    binding,
                    instance,
                )
            if row is not None and row[2] > 0:
                return Holder(row[0], row[1], float(row[2]))
        raise AssertionError("unreachable: a lease neither taken nor held")  # pragma: no cover

    async def release(self, host: str, actors: Iterable[ActorKey]) -> None:
        """Give up ``host``'s leases on ``actors`` (evicted from memory)."""
        keys = list(actors)
        if not keys:
            return
        await self._pool.execute(
            "UPDATE leases SET expires_at = 0 FROM unnest($2::text[], $3::text[]) AS g(b, i)"
            " WHERE leases.binding = g.b AND leases.instance = g.i AND leases.host = $1",
            host,
            [k[0] for k in keys],
            [k[1] for k in keys],
        )

    async def claim_due(
        self, host: str, now: float, limit: int, ttl: float, skip: AbstractSet[str]
    ) -> tuple[list[str], dict[ActorKey, int]]:
        """Claim up to ``limit`` pending continuations due by ``now`` whose actors this host
        holds or can take, earliest first; take the leases it lacks in the same transaction.

        Rows are locked ``FOR UPDATE SKIP LOCKED``, so hosts claiming at once split the due
        rows between them instead of queueing on each other. Returns the ids claimed and
        the leases newly taken (with their epochs); a row whose actor another host took in
        the meantime is left out.
        """
        async with self._pool.acquire() as db, db.transaction():
            rows = await db.fetch(
                f"""
                SELECT c.id, c.binding, c.instance FROM continuations c
                LEFT JOIN leases l ON l.binding = c.binding AND l.instance = c.instance
                WHERE c.status = 'pending' AND c.due_at <= $2 AND NOT (c.id = ANY($4::text[]))
                  AND {_CLAIMABLE}
                ORDER BY c.due_at, c.id LIMIT $3
                FOR UPDATE OF c SKIP LOCKED
                """,
                host,
                now,
                limit,
                list(skip),
            )
            taken = await self._take(db, host, ttl, {(r[1], r[2]) for r in rows})
            held = await self._held(db, host, {(r[1], r[2]) for r in rows} - set(taken))
        owned = set(taken) | held
        return [r[0] for r in rows if (r[1], r[2]) in owned], taken

    async def claim_waiting(
        self, host: str, strategies: Sequence[str], ttl: float, *, own: bool
    ) -> tuple[list[str], dict[ActorKey, int]]:
        """Claim the continuations whose work is out (phase 'waiting') and whose actor's
        lease is free or expired, taking those leases: a live host never gives up the lease
        of an actor with work out, so that work's host is gone. With ``own``, this host's
        own leases count too (it restarted). Rows are not locked: taking the lease is what
        makes this host the one to send the work (a row locked by a commit in progress
        must not be left out, or no host would ever send it)."""
        async with self._pool.acquire() as db, db.transaction():
            rows = await db.fetch(
                f"""
                SELECT c.id, c.binding, c.instance FROM continuations c
                LEFT JOIN leases l ON l.binding = c.binding AND l.instance = c.instance
                WHERE c.status = 'pending' AND c.phase = 'waiting'
                  AND c.strategy = ANY($2::text[])
                  AND (l.host IS NULL OR ($3 AND l.host = $1) OR l.expires_at <= {NOW})
                ORDER BY c.id
                """,
                host,
                list(strategies),
                own,
            )
            actors = {(r[1], r[2]) for r in rows}
            taken = await self._take(db, host, ttl, actors)
            held = await self._held(db, host, actors - set(taken))
        owned = set(taken) | held
        return [r[0] for r in rows if (r[1], r[2]) in owned], taken

    async def waiting_of(self, actors: Sequence[ActorKey], strategies: Sequence[str]) -> list[str]:
        """The ids of the continuations of ``actors`` whose work is out."""
        if not actors:
            return []
        rows = await self._pool.fetch(
            "SELECT c.id FROM continuations c JOIN unnest($1::text[], $2::text[]) AS g(b, i)"
            " ON c.binding = g.b AND c.instance = g.i WHERE c.status = 'pending'"
            " AND c.phase = 'waiting' AND c.strategy = ANY($3::text[]) ORDER BY c.id",
            [k[0] for k in actors],
            [k[1] for k in actors],
            list(strategies),
        )
        return [row[0] for row in rows]

    async def next_due(self, host: str, skip: AbstractSet[str]) -> float | None:
        """When this host next has something to fire: the earliest due time of a pending
        continuation whose actor it holds or can take, or the expiry of another host's lease
        on an actor with pending continuations, whichever is sooner."""
        async with self._pool.acquire() as db:
            due = await db.fetchval(
                f"""
                SELECT c.due_at FROM continuations c
                LEFT JOIN leases l ON l.binding = c.binding AND l.instance = c.instance
                WHERE c.status = 'pending' AND c.due_at IS NOT NULL
                  AND NOT (c.id = ANY($2::text[])) AND {_CLAIMABLE}
                ORDER BY c.due_at, c.id LIMIT 1
                """,
                host,
                list(skip),
            )
            expiry = await db.fetchval(
                f"""
                SELECT MIN(l.expires_at) FROM leases l
                WHERE l.host <> $1 AND l.expires_at > {NOW} AND EXISTS (
                    SELECT 1 FROM continuations c WHERE c.binding = l.binding
                    AND c.instance = l.instance AND c.status = 'pending'
                    AND c.due_at IS NOT NULL)
                """,
                host,
            )
        times = [float(t) for t in (due, expiry) if t is not None]
        return min(times) if times else None

    async def hosts(self) -> list[HostRow]:
        """Every registered host, with the number of live leases it holds, by id."""
        rows = await self._pool.fetch(
            f"""
            SELECT h.id, h.address, h.started_at, h.heartbeat_at, h.expires_at, h.stopped_at,
                   h.status::text,
                   (SELECT count(*) FROM leases l WHERE l.host = h.id AND l.expires_at > {NOW}),
                   {NOW}
            FROM hosts h ORDER BY h.id
            """
        )
        return [
            HostRow(r[0], r[1], r[2], r[3], r[4], r[5], orjson.loads(r[6]), int(r[7]), r[8])
            for r in rows
        ]

    @staticmethod
    async def _take(
        db: Connection,
        host: str,
        ttl: float,
        actors: AbstractSet[ActorKey],
        *,
        retake_own: bool = False,
    ) -> dict[ActorKey, int]:
        """Take the leases on ``actors`` that are free or expired, each with a new epoch.

        This host's live ones are taken again only with ``retake_own`` (an activation that
        no longer trusts its lease); a claim leaves them be, since a new epoch would fence
        off this host's own turns in flight. Live leases are left out before the upsert,
        which would lock them even when it leaves them be, and the rest are taken in key
        order, as renewals lock them."""
        if not actors:
            return {}
        keys = sorted(actors)
        rows = await db.fetch(
            f"""
            INSERT INTO leases (binding, instance, host, epoch, expires_at)
            SELECT b, i, $1, 1, {NOW} + $2 FROM unnest($3::text[], $4::text[]) AS wanted(b, i)
            WHERE NOT EXISTS (
                SELECT 1 FROM leases l WHERE l.binding = b AND l.instance = i
                AND l.expires_at > {NOW} AND NOT ($5 AND l.host = $1))
            ORDER BY b, i
            ON CONFLICT (binding, instance) DO UPDATE
                SET host = excluded.host, epoch = leases.epoch + 1,
                    expires_at = excluded.expires_at
                WHERE leases.expires_at <= {NOW} OR ($5 AND leases.host = excluded.host)
            RETURNING binding, instance, epoch
            """,
            host,
            ttl,
            [k[0] for k in keys],
            [k[1] for k in keys],
            retake_own,
        )
        return {(r[0], r[1]): r[2] for r in rows}

    @staticmethod
    async def _held(db: Connection, host: str, actors: AbstractSet[ActorKey]) -> set[ActorKey]:
        """Which of ``actors`` this host holds a live lease on."""
        if not actors:
            return set()
        keys = sorted(actors)
        rows = await db.fetch(
            f"SELECT l.binding, l.instance FROM leases l"
            f" JOIN unnest($2::text[], $3::text[]) AS g(b, i)"
            f" ON l.binding = g.b AND l.instance = g.i"
            f" WHERE l.host = $1 AND l.expires_at > {NOW}",
            host,
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        return {(r[0], r[1]) for r in rows}
