"""Group commit: turns that finish close together share one database transaction.

Each turn stays all-or-nothing: if a batch fails, its turns are retried one by one so a bad
turn fails alone, and a turn whose actor lost its in-memory view (after an earlier failed
commit) is refused instead of committing state built on effects that never happened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rpc._host import DownstreamMessage

from ._errors import CommitError, LeaseLostError, StoreError, SystemClosedError
from ._store.base import Commit, Refusal, Store
from ._turn import ActorSlot

logger = logging.getLogger("continuation")


@dataclass(slots=True)
class PendingCommit:
    """A turn waiting for durability, and who to tell."""

    commit: Commit
    slot: ActorSlot | None
    future: asyncio.Future[None]
    downstream: Sequence[DownstreamMessage] = ()
    after: asyncio.Future[None] | None = None  # the commit of an earlier turn it rests on


class Committer:
    """Applies queued commits in batches, one transaction per batch, in submission order.

    Every turn of a batch is settled (its future done) before the next batch starts, so once
    a turn's future is done, so is the future of every turn submitted before it.

    Args:
        store: where commits go.
        on_committed: called with each batch after it is durable (downstream delivery,
            scheduler wake-up), before the turns' callers resume.
        on_lost: called with the slot of a turn that could not commit, to throw away its
            actor's in-memory view.
        max_batch: most turns per transaction (as many as the dispatcher sends out at
            once: a same-system call's delivery and its handler commit in one).
    """

    def __init__(
        self,
        store: Store,
        *,
        on_committed: Callable[[list[PendingCommit]], None],
        on_lost: Callable[[ActorSlot], None],
        max_batch: int = 2048,
    ) -> None:
        self._store = store
        self._on_committed = on_committed
        self._on_lost = on_lost
        self._max_batch = max_batch
        self._queue: list[PendingCommit] = []
        self._ready = asyncio.Event()
        self._closing = False
        self.applied = 0  # turns committed so far
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="continuation-committer")

    def submit(
        self,
        commit: Commit,
        slot: ActorSlot | None,
        downstream: Sequence[DownstreamMessage] | None = None,
        *,
        after: asyncio.Future[None] | None = None,
    ) -> asyncio.Future[None]:
        """Queue one turn's commit; the future resolves once it is durable. With ``after``
        (the future of a commit submitted earlier), it commits only if that one does."""
        if self._closing:
            raise SystemClosedError("the actor system is closing; no more turns can commit")
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.append(PendingCommit(commit, slot, future, downstream or (), after))
        self._ready.set()
        return future

    @property
    def queued(self) -> int:
        """Turns waiting for their commit."""
        return len(self._queue)

    async def close(self) -> None:
        """Commit everything already queued, then stop."""
        self._closing = True
        self._ready.set()
        await self._task

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._apply(batch)
            if self._closing:
                return

    async def _apply(self, batch: list[PendingCommit]) -> None:
        live: list[PendingCommit] = []
        positions: dict[asyncio.Future[None], int] = {}  # in live, for the turns resting on one
        for pending in batch:
            if pending.slot is not None and pending.slot.lost:
                self._fail(pending, CommitError(
                    "an earlier turn of this actor could not commit, so this turn ran on state"
                    " that never became durable; nothing of it was applied"
                ))  # fmt: skip
                continue
            after, rests_on = pending.after, None
            if after is not None:
                if not after.done():  # submitted earlier, not settled: so in this batch
                    rests_on = positions.get(after)
                if rests_on is None and not _succeeded(after):
                    self._fail(pending, CommitError(
                        "the commit this turn rests on (the delivery of the outcome it"
                        " received) was not applied, so neither is this turn"
                    ))  # fmt: skip
                    continue
            pending.commit.rests_on = rests_on
            positions[pending.future] = len(live)
            live.append(pending)
        if not live:
            return
        try:
            refused = await self._store.apply([p.commit for p in live])
        except Exception as exc:
            if len(live) > 1:
                for pending in live:
                    await self._apply([pending])
                return
            self._fail(live[0], _commit_error(exc))
            return
        for index, reason in refused.items():
            self._fail(live[index], _refusal_error(reason))
        done = [p for i, p in enumerate(live) if i not in refused]
        self.applied += len(done)
        self._on_committed(done)
        for pending in done:
            if not pending.future.done():
                pending.future.set_result(None)

    def _fail(self, pending: PendingCommit, error: CommitError) -> None:
        if pending.slot is not None:
            self._on_lost(pending.slot)
        if not pending.future.done():
            pending.future.set_exception(error)
            # A firing's failure is handled by the scheduler; nobody else may be waiting.
            pending.future.add_done_callback(_consume)


def _refusal_error(reason: Refusal) -> CommitError:
    if reason is Refusal.LEASE_LOST:
        return LeaseLostError(
            "this host no longer holds the actor's lease (it expired while the host stalled,"
            " or another host took the actor over), so the turn's effects were not applied"
        )
    return CommitError(
        "the continuation this turn fired was changed by someone else (cancelled or"
        " retried, perhaps from another process) before the turn could commit"
    )


def _commit_error(exc: Exception) -> CommitError:
    cause = exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ else exc
    error = CommitError(f"the turn's effects could not be committed: {cause}")
    error.__cause__ = exc
    logger.error("commit failed: %s", cause)
    return error


def _succeeded(future: asyncio.Future[None]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
