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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from operation_chain import OperationChain, execute_operation_chain
from rpc._host import DownstreamMessage

from ._activation import Activations
from ._committer import Committer
from ._errors import ContinuationCancelled
from ._leases import LeasedElsewhere
from ._options import RetryPolicy
from ._outcomes import completed, failed, halted, redispatched, work_failed
from ._records import AlarmInfo, to_datetime
from ._store.base import Commit, ContinuationRow, Store
from ._turn import ActorSlot, Runtime, TurnBuffer
from ._work import decode_outcome

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
        dispatch: Callable[[ContinuationRow, int], None],
        on_notice: Callable[[float], None] | None = None,
    ) -> None:
        self._store = store
        self._activations = activations
        self._committer = committer
        self._runtime = runtime
        self._classes = classes
        self._batch_size = batch_size
        self._housekeeping = housekeeping
        self._dispatch = dispatch
        self._on_notice = on_notice  # an outside timer's
        self._wake = asyncio.Event()
        self._next_due = math.inf
        self._max_in_flight = 4 * batch_size
        self._tasks: set[asyncio.Task[None]] = set()
        self._escaped: list[BaseException] = []
        self._reading = 0
        self._settled: list[str] = []
        self.in_flight: set[str] = set()
        self.revoked: set[str] = set()
        # The delivery each row fired from memory rests on (see fire_claimed).
        self._behind: dict[str, asyncio.Future[None]] = {}
        self._claimed: list[ContinuationRow] = []  # to fire from memory, in this loop round

    def notice(self, due: float) -> None:
        """Something is now due at ``due``: wake the loop if that is sooner than it waits for."""
        if self._on_notice is not None:
            self._on_notice(due)
        if due < self._next_due:
            self._next_due = due
            self._wake.set()

    async def run(self, *, idle_check: float) -> None:
        """Fire continuations as they fall due on the real clock, until cancelled.

        Firings are started without waiting for their commits: the next due rows are fetched
        (on the store's reader, which a commit in progress does not block) while the previous
        ones are still being made durable, so one slow fsync does not delay later timers.
        """
        while True:
            self._wake.clear()
            self._escaped.clear()  # already logged; nobody drains on the real clock
            if len(self.in_flight) >= self._max_in_flight:
                wait = idle_check  # enough is firing; a settling commit wakes the loop
            else:
                try:
                    if await self.fire_due():
                        continue
                    self._housekeeping()
                    # Rows already firing are only waiting for their commit; look past them.
                    next_due = await self._store.next_due(skip=set(self.in_flight))
                except Exception:
                    logger.exception("the scheduler failed; trying again in a second")
                    await asyncio.sleep(1.0)
                    continue
                self._next_due = math.inf if next_due is None else next_due
                wait = max(0.0, self._next_due - self._runtime.clock.now())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(idle_check, wait)):
                    await self._wake.wait()

    async def fire_due(self) -> int:
        """Start firing one batch of what is due now; return how many were started.

        Rows already firing are skipped, including any whose commit settled while the batch
        was being read (the read may predate that commit). Rows of one actor run one after
        another in a single task, in due order; each still commits as its own turn.
        """
        mark = len(self._settled)
        self._reading += 1
        try:
            now = self._runtime.clock.now()
            rows = await self._store.fetch_due(now, self._batch_size, skip=set(self.in_flight))
        finally:
            self._reading -= 1
        settled = set(self._settled[mark:])
        if not self._reading:
            self._settled.clear()
        rows = [row for row in rows if row.id not in self.in_flight and row.id not in settled]
        self.in_flight.update(row.id for row in rows)
        self._start(rows)
        return len(rows)

    def claim(self, cid: str) -> bool:
        """Take a continuation whose outcome is being delivered in this process, to fire it
        from memory (``fire_claimed``) instead of reading it back once the delivery is
        durable; False if it is already firing."""
        if cid in self.in_flight:
            return False
        self.in_flight.add(cid)
        return True

    def fire_claimed(self, deliveries: list[tuple[ContinuationRow, asyncio.Future[None]]]) -> None:
        """Fire claimed rows, each as its outcome's delivery leaves it, while that delivery
        (the future) is still committing: the firing commits behind the delivery, and not at
        all if the delivery does not (the row then fires, or its work goes out, again)."""
        # Gathered until the loop's next round: the calls to a hundred actors deliver to
        # the same few callers, whose firings then run as one task per caller.
        if not self._claimed:
            asyncio.get_running_loop().call_soon(self._fire_gathered)
        for row, delivery in deliveries:
            self._behind[row.id] = delivery
            self._claimed.append(row)

    def _fire_gathered(self) -> None:
        rows, self._claimed = self._claimed, []
        self._start(rows)

    def release(self, cid: str) -> None:
        """Give back a claim whose delivery was not submitted: the row fires as usual."""
        self._settle([cid])

    def _start(self, rows: list[ContinuationRow]) -> None:
        """Fire ``rows`` (already in flight), one task per actor, in their order."""
        by_actor: dict[tuple[str, str], list[ContinuationRow]] = {}
        for row in rows:
            by_actor.setdefault((row.binding, row.instance), []).append(row)
        for group in by_actor.values():
            task = asyncio.get_running_loop().create_task(self._fire_group(group))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    async def drain(self) -> int:
        """Fire everything due now, including what those handlers make due now, and wait
        until all of it is durable; return how many fired. What escaped a handler as a
        ``BaseException`` (handlers' ordinary exceptions are failed attempts) is raised
        here."""
        fired = 0
        while True:
            started = await self.fire_due()
            fired += started
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            if self._escaped:
                escaped, self._escaped = self._escaped[0], []
                raise escaped
            if not started and not self._tasks:
                return fired

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (escaped := task.exception()) is not None:
            logger.error("a firing failed outside its handler", exc_info=escaped)
            self._escaped.append(escaped)

    async def close(self) -> None:
        """Let the firings already started (or claimed) finish and commit."""
        if self._claimed:
            self._fire_gathered()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _fire_group(self, rows: list[ContinuationRow]) -> None:
        futures: list[asyncio.Future[None]] = []
        try:
            cls = self._classes.get(rows[0].binding)
            if cls is None:
                for row in rows:
                    now = self._now()
                    reason = f"no actor class is registered for binding {row.binding!r}"
                    commit = Commit(row.binding, row.instance, now, update=halted(row, now, reason))
                    futures.append(self._committer.submit(commit, None))
            else:
                async with self._activations.turn(cls, rows[0].instance, activate=False) as slot:
                    for row in rows:
                        future = await self._fire(slot, row)
                        if future is not None:
                            futures.append(future)
                    if futures:
                        self._activations.track(slot, futures[-1])  # the actor's latest
            if futures:
                # The committer settles commits in the order they were submitted, so the last
                # one settled means all did; waiting for each would cost a callback apiece.
                await asyncio.wait((futures[-1],))
        finally:
            self._settle([row.id for row in rows])

    def _settle(self, ids: list[str]) -> None:
        """These firings are over: what is due of them fires again from the store."""
        for cid in ids:
            self.in_flight.discard(cid)
            self.revoked.discard(cid)  # moot once this firing is over
            self._behind.pop(cid, None)
            if self._reading:
                self._settled.append(cid)
        self._wake.set()

    async def _fire(self, slot: ActorSlot, row: ContinuationRow) -> asyncio.Future[None] | None:
        if row.id in self.revoked:
            self.revoked.discard(row.id)
            return None
        if row.phase == "retry" and not row.cancel_requested:
            return self._send_again(row)
        try:
            commit, downstream = await self._turn(slot, row, self._now())
        except LeasedElsewhere:
            return None  # another host took the actor since the row was claimed: it fires it
        if row.key is not None and slot.keys.get(row.key) == row.id and _frees_key(commit):
            del slot.keys[row.key]
        return self._committer.submit(
            commit, slot, downstream, after=self._behind.pop(row.id, None)
        )

    async def _turn(
        self, slot: ActorSlot, row: ContinuationRow, now: float
    ) -> tuple[Commit, Sequence[DownstreamMessage]]:
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
            try:
                chain, inject = self._handler(row, now)
            except _WorkFailed as failure:
                update = work_failed(row, now, failure.error, self._work_retry_policy(row))
                return Commit(slot.binding, slot.instance, now, update=update), []
            await self._activations.activate(slot)
            slot.turn = buffer
            try:
                execute_operation_chain(
                    slot.actor, chain, inject=inject, policy=self._runtime.policy
                )
            finally:
                slot.turn = None
            update = completed(row, now)
        except LeasedElsewhere:
            raise
        except Exception as exc:
            self._activations.discard_instance(slot)
            update = failed(row, now, exc, self._retry_policy(row))
            return Commit(slot.binding, slot.instance, now, update=update), []
        commit = slot.finish_turn(buffer)
        commit.update = update
        return commit, buffer.downstream

    def _handler(self, row: ContinuationRow, now: float) -> tuple[OperationChain, dict[str, Any]]:
        """The chain to run and what to inject; raises ``_WorkFailed`` when a strategy's
        failure has no error chain to go to."""
        if row.cancel_requested:
            return self._chain(row.error_chain), {"error": ContinuationCancelled(row.id)}
        if row.phase is None:
            scheduled, fired = to_datetime(row.scheduled_at), to_datetime(now)
            info = AlarmInfo(row.id, scheduled, fired, row.attempts + 1)
            return self._chain(row.chain), {"result": info}
        if row.phase == "ready" and row.outcome is not None:
            kind, value = decode_outcome(self._runtime.codec, row.outcome)
            if kind == "ok":
                return self._chain(row.chain), {"result": value}
            error: BaseException = value
        else:  # still waiting when its timeout came
            timeout = orjson.loads(row.options).get("timeout")
            error = TimeoutError(f"the {row.strategy} got no outcome within {timeout} s")
        if row.error_chain is None:
            raise _WorkFailed(error)
        return self._chain(row.error_chain), {"error": error}

    def _send_again(self, row: ContinuationRow) -> asyncio.Future[None]:
        """Failed work's backoff is over: wait for a new outcome, and send the work again
        once that is durable."""
        now = self._now()
        timeout = orjson.loads(row.options).get("timeout")
        update = redispatched(row, now, None if timeout is None else now + timeout)
        commit = Commit(row.binding, row.instance, now, update=update, standalone=True)
        future = self._committer.submit(commit, None)

        def sent(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                self._dispatch(row, row.revision + 1)

        future.add_done_callback(sent)
        return future

    def _work_retry_policy(self, row: ContinuationRow) -> RetryPolicy:
        # A proxy-fetch already retried its request by the policy; what fails after that
        # is final.
        if row.strategy == "proxy-fetch":
            return RetryPolicy(max_attempts=1)
        return self._retry_policy(row)

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


class _WorkFailed(Exception):
    """A strategy's work failed, and the continuation has no error chain to take it."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def _frees_key(commit: Commit) -> bool:
    """Whether the fired continuation stops holding its dedup key with this commit."""
    update = commit.update
    return update is not None and (update.status != "pending" or update.cancel_requested)
