"""What a store keeps and the interface every store implements.

The rows here are plain records; the store turns them into SQL. ``Commit`` is one turn's
effects; ``Store.apply`` makes a batch of them durable in one transaction (group commit)
while keeping each turn all-or-nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


@dataclass(slots=True)
class NewContinuation:
    """A continuation a turn scheduled, encoded and ready to insert."""

    id: str
    binding: str
    instance: str
    strategy: str
    chain: bytes
    error_chain: bytes | None
    chain_text: str
    error_chain_text: str | None
    options: str
    retry: str | None
    due_at: float | None
    key: str | None
    cron: str | None
    version: str
    phase: str | None = None
    work: bytes | None = None
    wait_name: str | None = None


@dataclass(slots=True)
class ContinuationRow:
    """A stored continuation, as read back."""

    id: str
    binding: str
    instance: str
    strategy: str
    status: str
    chain: bytes
    error_chain: bytes | None
    chain_text: str
    error_chain_text: str | None
    options: str
    retry: str | None
    due_at: float | None
    scheduled_at: float
    attempts: int
    last_error: str | None
    last_traceback: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    key: str | None
    cron: str | None
    version: str
    cancel_requested: bool
    revision: int
    phase: str | None = None
    work: bytes | None = None
    outcome: bytes | None = None
    wait_name: str | None = None


@dataclass(slots=True)
class RowUpdate:
    """The new state of one continuation after it fired, failed, or was cancelled or retried.

    ``revision`` is the revision the change was computed from: if the row changed since
    (another process cancelled it, say), the whole turn carrying the update is refused.

    ``columns`` names the only columns that may differ from the row as read (besides
    ``updated_at`` and ``revision``), or is ``None`` for any. A store may write just those:
    a narrower SQLite update maintains fewer indexes, and the two commonest transitions
    (a plain completion, a delivered outcome) change few columns.
    """

    id: str
    revision: int
    status: str
    due_at: float | None
    scheduled_at: float
    attempts: int
    last_error: str | None
    last_traceback: str | None
    finished_at: float | None
    cancel_requested: bool
    events: Sequence[tuple[str, str | None]]
    phase: str | None = None
    outcome: bytes | None = None
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class SignalSend:
    """A signal to deliver to the oldest continuation waiting for it, or to buffer."""

    binding: str
    instance: str
    name: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease a host holds on an actor: only a commit under the current epoch of a lease
    that has not expired is accepted (the fence against a host that stalled past it)."""

    host: str
    epoch: int


ActorKey = tuple[str, str]
"""An actor: its binding and instance."""


@dataclass(frozen=True, slots=True)
class Holder:
    """Another host's live lease on an actor: who, where to reach it, and until when."""

    host: str
    address: str | None
    expires_in: float


class Refusal(StrEnum):
    """Why ``Store.apply`` left a turn out."""

    CHANGED = "changed"
    """A continuation the turn updates changed since it was read."""
    LEASE_LOST = "lease lost"
    """The turn ran under a lease that expired or that another host has taken since."""


@dataclass(slots=True)
class Commit:
    """Everything one turn changes; applied whole or not at all.

    Attributes:
        binding: the actor's binding.
        instance: the actor's instance id.
        now: the clock time of the turn, for timestamps.
        writes: storage keys to values (encoded), or to ``None`` to delete.
        new: continuations to insert.
        update: the firing (or system-changed) continuation's new state.
        cancels: ids of this actor's pending continuations to cancel.
        signals: signals sent by the turn, delivered in order.
        notes: audit events ``(cid, event, detail)`` that change no row.
        standalone: no later turn builds on this commit (it only stores a strategy's
            outcome, say), so refusing it refuses nothing else of its actor.
        call_result: ``(idempotency key, encoded outcome)`` of the call this turn answered.
        lease: the lease the turn ran under; ``None`` for a commit that needs none (a single
            host, or one that only changes continuation rows, fenced by their revisions).
        rests_on: the index, in the batch being applied, of an earlier commit this one
            builds on (a handler fired behind the delivery of its outcome): refused if that
            one is. Set by the committer for each batch.
    """

    binding: str
    instance: str
    now: float
    # Empty effects are empty tuples, not lists: thousands of commits may wait for their
    # transaction at once, and every list among them is one more object for each pass of
    # the garbage collector to walk.
    writes: dict[str, bytes | None] = field(default_factory=dict)
    new: Sequence[NewContinuation] = ()
    update: RowUpdate | None = None
    cancels: Sequence[str] = ()
    signals: Sequence[SignalSend] = ()
    notes: Sequence[tuple[str, str, str | None]] = ()
    standalone: bool = False
    call_result: tuple[str, bytes] | None = None
    lease: Lease | None = None
    rests_on: int | None = None


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One stored audit event."""

    at: float
    event: str
    detail: str | None


def actor_view(rows: Iterable[Iterable[Any]]) -> tuple[dict[str, bytes], dict[str, str]]:
    """``load_actor``'s answer from the rows of its one query: (key, value, None) for a
    stored value, (key, None, id) for a pending continuation's dedup key."""
    state: dict[str, bytes] = {}
    keys: dict[str, str] = {}
    for key, value, cid in rows:
        if cid is None:
            state[key] = bytes(value)
        else:
            keys[key] = cid
    return state, keys


def refused_turns(
    commits: Sequence[Commit],
    revisions: Mapping[str, int],
    refused: Mapping[int, Refusal] | None = None,
) -> dict[int, Refusal]:
    """The turns of a batch to refuse (by index): those already ``refused`` (a lost lease,
    say), those whose update was not computed from its row's revision as the turns before
    it in the batch leave it, those resting on a refused one, and every later turn of a
    refused turn's actor, which ran on its effects, unless the refused one is
    ``standalone``.

    ``revisions`` holds each updated row's revision in the database (none: the row is
    gone). Two updates of one row may follow each other in a batch, the second computed
    from the revision the first makes: a same-system remote call's handler is fired behind
    the target's turn that delivered its outcome, and rests on it.
    """
    result = dict(refused or {})
    current = dict(revisions)
    actors: dict[tuple[str, str], Refusal] = {}
    for index, commit in enumerate(commits):
        actor = (commit.binding, commit.instance)
        reason = result.get(index) or actors.get(actor)
        if reason is None and commit.rests_on is not None:
            reason = result.get(commit.rests_on)
        update = commit.update
        if reason is None and update is not None:
            if current.get(update.id) == update.revision:
                current[update.id] = update.revision + 1
            else:
                reason = Refusal.CHANGED
        if reason is not None:
            result[index] = reason
            if not commit.standalone:
                actors.setdefault(actor, reason)
    return result


class Store(Protocol):
    """Durable storage of actor state and continuations."""

    async def open(self) -> None:
        """Connect, and create or migrate the schema."""
        ...

    async def close(self) -> None:
        """Close; idempotent."""
        ...

    async def apply(self, commits: Sequence[Commit]) -> dict[int, Refusal]:
        """Commit the turns in one transaction; return the indexes of the turns refused, and
        why (their effects are left out). A turn after a refused one of the same actor is
        refused too, unless the refused one is ``standalone``."""
        ...

    async def load_actor(
        self, binding: str, instance: str
    ) -> tuple[dict[str, bytes], dict[str, str]]:
        """One actor's stored values by key, and the dedup keys of its pending
        continuations mapped to their ids: what activating it reads, in one query (each
        read waits for the database and then for a turn of the event loop, which under
        load is the longer wait)."""
        ...

    async def fetch_due(
        self, now: float, limit: int, *, skip: AbstractSet[str] = frozenset()
    ) -> list[ContinuationRow]:
        """Up to ``limit`` pending continuations due at or before ``now`` and not in
        ``skip``, earliest first (ties by id)."""
        ...

    async def next_due(self, *, skip: AbstractSet[str] = frozenset()) -> float | None:
        """The earliest due time of a pending continuation not in ``skip``."""
        ...

    async def waiting(self, strategies: Sequence[str]) -> list[ContinuationRow]:
        """Pending continuations of ``strategies`` whose work is out (phase 'waiting'),
        oldest first: the outbox to dispatch again after a restart."""
        ...

    async def call_result(self, binding: str, instance: str, key: str) -> bytes | None:
        """The stored outcome of the call answered under idempotency ``key``, if any."""
        ...

    async def get(self, cid: str) -> ContinuationRow | None:
        """One continuation by id."""
        ...

    async def find(
        self,
        *,
        statuses: Sequence[str] | None,
        binding: str | None,
        instance: str | None,
        limit: int,
    ) -> list[ContinuationRow]:
        """Continuations matching every given filter, oldest first."""
        ...

    async def audit(self, cid: str) -> list[AuditRow]:
        """The audit trail of one continuation, oldest first."""
        ...

    async def purge(self, *, finished_before: float, statuses: Sequence[str]) -> int:
        """Delete final rows (and their audit) finished before a time, and call results
        stored before it; return how many rows."""
        ...
