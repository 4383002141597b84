"""The scheduler: fires due continuations as turns, in due-time order.

Only the next due time is kept in memory; due rows are read from the store in batches. A
firing's outcome (completed, rescheduled, retried, dead) commits in the same transaction as
the handler's effects, so nothing is done twice or lost, whatever instant the process dies.
The database never records a firing as started, so there is nothing to recover on start:
a row whose turn did not commit is still pending, and fires again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from operation_chain import OperationChain, execute_operation_chain
from rpc._host import DownstreamMessage

from ._activation import Activations
from ._committer import Committer
from ._errors import ContinuationCancelled
from ._options import RetryPolicy
from ._outcomes import completed, failed, halted
from ._records import AlarmInfo, to_datetime
from ._store.base import Commit, ContinuationRow, Store
from ._turn import ActorSlot, Runtime, TurnBuffer

if TYPE_CHECKING:
    from ._actor import Actor

logger = logging.getLogger("continuation")


class Scheduler:
    """Finds due continuations and runs each in a turn of its actor.

    On the real clock, ``run()`` loops by itself; on a manual clock, nothing fires until
    ``advance`` or ``drain`` is awaited.
    """

    def __init__(
        self,
        *,
        store: Store,
        activations: Activations,
        committer: Committer,
        runtime: Runtime,
        classes: dict[str, type[Actor]],
        batch_size: int,
        housekeeping: Callable[[], object],
    ) -> None:
        self._store = store
        self._activations = activations
        self._committer = committer
        self._runtime = runtime
        self._classes = classes
        self._batch_size = batch_size
        self._housekeeping = housekeeping
        self._wake = asyncio.Event()
        self._next_due = math.inf
        self.in_flight: set[str] = set()
        self.revoked: set[str] = set()

    def notice(self, due: float) -> None:
        """Something is now due at ``due``: wake the loop if that is sooner than it waits for."""
        if due < self._next_due:
            self._next_due = due
            self._wake.set()

    async def run(self, *, idle_check: float) -> None:
        """Fire continuations as they fall due on the real clock, until cancelled."""
        while True:
            self._wake.clear()
            try:
                if await self.fire_due():
                    continue
                self._housekeeping()
                next_due = await self._store.next_due()
            except Exception:
                logger.exception("the scheduler failed; trying again in a second")
                await asyncio.sleep(1.0)
                continue
            self._next_due = math.inf if next_due is None else next_due
            wait = min(idle_check, max(0.0, self._next_due - self._runtime.clock.now()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def fire_due(self) -> int:
        """Fire one batch of what is due now; return how many fired."""
        rows = await self._store.fetch_due(self._runtime.clock.now(), self._batch_size)
        rows = [row for row in rows if row.id not in self.in_flight]
        if rows:
            self.in_flight.update(row.id for row in rows)
            try:
                await asyncio.gather(*(self._fire(row) for row in rows))
            finally:
                self.in_flight.difference_update(row.id for row in rows)
        return len(rows)

    async def drain(self) -> None:
        """Fire everything due now, including what those handlers make due now."""
        while await self.fire_due():
            pass

    async def _fire(self, row: ContinuationRow) -> None:
        cls = self._classes.get(row.binding)
        if cls is None:
            now = self._now()
            reason = f"no actor class is registered for binding {row.binding!r}"
            commit = Commit(row.binding, row.instance, now, update=halted(row, now, reason))
            await asyncio.wait([self._committer.submit(commit, None)])
            return
        async with self._activations.turn(cls, row.instance, activate=False) as slot:
            if row.id in self.revoked:
                self.revoked.discard(row.id)
                return
            commit, downstream = await self._turn(slot, row, self._now())
            if row.key is not None and slot.keys.get(row.key) == row.id and _frees_key(commit):
                del slot.keys[row.key]
            future = self._committer.submit(commit, slot, downstream)
            self._activations.track(slot, future)
        await asyncio.wait([future])

    async def _turn(
        self, slot: ActorSlot, row: ContinuationRow, now: float
    ) -> tuple[Commit, list[DownstreamMessage]]:
        """Run the row's handler in a turn; return what to commit, success or not."""
        cls = slot.cls
        if row.version != cls.version and row.version not in cls.compatible_versions:
            reason = (
                f"scheduled by {cls.__name__} version {row.version!r}, but the class is now"
                f" version {cls.version!r}; list the old version in compatible_versions once"
                " the handler accepts it"
            )
            return Commit(slot.binding, slot.instance, now, update=halted(row, now, reason)), []
        buffer = TurnBuffer(now=now)
        try:
            chain, inject = self._handler(row, now)
            await self._activations.activate(slot)
            slot.turn = buffer
            try:
                execute_operation_chain(
                    slot.actor, chain, inject=inject, policy=self._runtime.policy
                )
            finally:
                slot.turn = None
            update = completed(row, now, orjson.loads(row.options).get("timezone"))
        except Exception as exc:
            self._activations.discard_instance(slot)
            update = failed(row, now, exc, self._retry_policy(row))
            return Commit(slot.binding, slot.instance, now, update=update), []
        commit = slot.finish_turn(buffer)
        commit.update = update
        return commit, buffer.downstream

    def _handler(self, row: ContinuationRow, now: float) -> tuple[OperationChain, dict[str, Any]]:
        if row.cancel_requested:
            return self._chain(row.error_chain), {"error": ContinuationCancelled(row.id)}
        info = AlarmInfo(row.id, to_datetime(row.scheduled_at), to_datetime(now), row.attempts + 1)
        return self._chain(row.chain), {"result": info}

    def _chain(self, data: bytes | None) -> OperationChain:
        chain = self._runtime.codec.loads(data or b"null")
        if not isinstance(chain, OperationChain):
            raise TypeError(f"the stored chain decoded to {type(chain).__name__}")
        return chain

    def _retry_policy(self, row: ContinuationRow) -> RetryPolicy:
        if row.retry is not None:
            try:
                return RetryPolicy.model_validate_json(row.retry)
            except ValidationError:
                logger.warning("continuation %s has an unreadable retry policy", row.id)
        return self._runtime.retry

    def _now(self) -> float:
        return self._runtime.clock.now()


def _frees_key(commit: Commit) -> bool:
    """Whether the fired continuation stops holding its dedup key with this commit."""
    update = commit.update
    return update is not None and (update.status != "pending" or update.cancel_requested)
