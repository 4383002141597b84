"""A shared PostgreSQL store seen from one of several hosts.

Everything passes through to the store, except reading what to fire and what to send: due
continuations are claimed (``FOR UPDATE SKIP LOCKED``, taking the actors' leases in the same
transaction), so each row fires on the one host that holds its actor, and the work still out
after a restart is claimed the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Final, TypeVar

import asyncpg

from .._errors import StoreError
from .base import ActorKey, AuditRow, Commit, ContinuationRow, Refusal
from .postgres import PostgresStore
from .postgres_hosts import HostDirectory

_DEADLOCK_ATTEMPTS: Final = 3

T = TypeVar("T")


class HostedStore:
    """``store`` as host ``host`` sees it; ``claimed`` hears of every lease a claim took.

    Args:
        store: the shared, opened PostgreSQL store.
        directory: its hosts and leases.
        host: this host's id.
        ttl: how long a lease taken by a claim lasts.
        claimed: told of the leases each claim took, with their epochs (and, as
            ``adopt=False``, that the claim already returned their waiting work).
    """

    def __init__(
        self,
        store: PostgresStore,
        directory: HostDirectory,
        *,
        host: str,
        ttl: float,
        claimed: Callable[..., None],
    ) -> None:
        self.store = store
        self._directory = directory
        self._host = host
        self._ttl = ttl
        self._claimed = claimed

    def __repr__(self) -> str:
        return f"{self.store!r} as host {self._host!r}"

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    async def apply(self, commits: Sequence[Commit]) -> dict[int, Refusal]:
        """Apply, trying again when the transaction was a deadlock's victim."""
        return await _retrying(lambda: self.store.apply(commits))

    async def load_actor(
        self, binding: str, instance: str
    ) -> tuple[dict[str, bytes], dict[str, str]]:
        return await self.store.load_actor(binding, instance)

    async def fetch_due(
        self, now: float, limit: int, *, skip: AbstractSet[str] = frozenset()
    ) -> list[ContinuationRow]:
        ids, taken = await _retrying(
            lambda: self._directory.claim_due(self._host, now, limit, self._ttl, skip)
        )
        self._claimed(taken)
        rows = await self.store.rows(ids)
        return sorted(
            (row for row in rows if row.status == "pending"),
            key=lambda row: (row.due_at or 0.0, row.id),
        )

    async def next_due(self, *, skip: AbstractSet[str] = frozenset()) -> float | None:
        return await self._directory.next_due(self._host, skip)

    async def waiting(self, strategies: Sequence[str]) -> list[ContinuationRow]:
        """The work still out for actors this host held before a restart, or whose host is
        gone; their leases are taken."""
        return await self._waiting(strategies, own=True)

    async def taken_over(self, strategies: Sequence[str]) -> list[ContinuationRow]:
        """The work still out for actors whose host is gone (died or stopped); their leases
        are taken, so no other host sends it again."""
        return await self._waiting(strategies, own=False)

    async def _waiting(self, strategies: Sequence[str], *, own: bool) -> list[ContinuationRow]:
        ids, taken = await _retrying(
            lambda: self._directory.claim_waiting(self._host, strategies, self._ttl, own=own)
        )
        self._claimed(taken)
        rows = await self.store.rows(ids)
        return sorted(
            (row for row in rows if row.status == "pending" and row.phase == "waiting"),
            key=lambda row: row.id,
        )

    async def waiting_of(
        self, actors: Sequence[ActorKey], strategies: Sequence[str]
    ) -> list[ContinuationRow]:
        """The work still out for ``actors`` (whose leases this host just took)."""
        ids = await self._directory.waiting_of(actors, strategies)
        return sorted(await self.store.rows(ids), key=lambda row: row.id)

    async def call_result(self, binding: str, instance: str, key: str) -> bytes | None:
        return await self.store.call_result(binding, instance, key)

    async def get(self, cid: str) -> ContinuationRow | None:
        return await self.store.get(cid)

    async def find(
        self,
        *,
        statuses: Sequence[str] | None,
        binding: str | None,
        instance: str | None,
        limit: int,
    ) -> list[ContinuationRow]:
        return await self.store.find(
            statuses=statuses, binding=binding, instance=instance, limit=limit
        )

    async def audit(self, cid: str) -> list[AuditRow]:
        return await self.store.audit(cid)

    async def purge(self, *, finished_before: float, statuses: Sequence[str]) -> int:
        return await self.store.purge(finished_before=finished_before, statuses=statuses)


async def _retrying(attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()``, tried again when PostgreSQL chose its transaction as a deadlock's
    victim; the victim changed nothing, so trying again is safe. (Claims lock rows and then
    leases, commits leases and then rows: rarely, they cross.)"""
    for tries in range(1, _DEADLOCK_ATTEMPTS + 1):
        try:
            return await attempt()
        except (asyncpg.DeadlockDetectedError, StoreError) as exc:
            deadlock = exc if isinstance(exc, asyncpg.DeadlockDetectedError) else exc.__cause__
            if tries == _DEADLOCK_ATTEMPTS or not isinstance(
                deadlock, asyncpg.DeadlockDetectedError
            ):
                raise
    raise AssertionError("unreachable")  # pragma: no cover
