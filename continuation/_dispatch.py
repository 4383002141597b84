"""The outbox runner: sends strategies' work once the scheduling turn has committed, and
stores each outcome as it comes back.

Work is recorded in the turn's transaction (the row's ``work``), so nothing is sent for a
turn that did not commit, and after a crash every row still waiting is sent again
(``resume``). An outcome is stored with a fence on the row's revision: if the row changed
since the work went out (its timeout fired, it was cancelled), the outcome is ignored and
the audit trail says so. Same-system remote calls store the outcome in the target turn's
own transaction, so the target's effects and the caller's result commit together.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Final, NamedTuple, Protocol

import orjson
from pydantic import ValidationError

from ._committer import Committer
from ._errors import CommitError
from ._fetch import FetchDispatcher, FetchError, FetchRequest
from ._options import RetryPolicy
from ._outcomes import after_delivery, delivered
from ._remote import Remotes
from ._store.base import Commit, ContinuationRow, NewContinuation, RowUpdate, Store
from ._turn import Runtime
from ._work import DISPATCHED, Outcome, RemoteCall, encode_outcome

logger = logging.getLogger("continuation")

_CALL_ATTEMPTS: Final = 5
"""Times a same-system remote call is run before its failure to commit is final; the row
then waits for its timeout, which delivers the failure."""

MAX_RUNNING: Final = 2048
"""Jobs out at once; more wait in a queue as plain tuples, so a burst of thousands costs
neither memory nor garbage-collection time per waiting job. Calls to this system's actors
are out as data in their target's lane, not as tasks: the more are out, the more calls a
lane runs per hold of its actor's turn. With each call's handler committing behind its
delivery, 2,048 out (and transactions of up to 2,048 turns, see ``Committer``) beat 1,024
(10,000 calls to 100 actors: 7,700 against 7,150 /s over eight alternating runs); 4,096
gained nothing more."""

LocalCall = tuple[RemoteCall, Callable[[Outcome], RowUpdate], str]
"""A remote call to an actor of this system, what stores its outcome for the caller, and its
idempotency key."""

LocalCalls = Callable[[list[LocalCall]], Awaitable[list[asyncio.Future[None] | None]]]
"""Runs remote calls to one actor of this system, each in a turn of its own, one after
another; the update that stores a call's outcome for its caller commits in that turn's
transaction (or alone, when the call raised or ran on another host sharing the database).
Returns each call's commit once its turn has run (``None``: nothing to wait for); one that
could not commit fails with ``CommitError``."""


class DeliveryFiring(Protocol):
    """Fires a same-system call's handler behind the turn that delivers its outcome (the
    scheduler), so the handler does not wait for the delivery to be durable and read back."""

    def claim(self, cid: str) -> bool: ...

    def fire_claimed(
        self, deliveries: list[tuple[ContinuationRow, asyncio.Future[None]]]
    ) -> None: ...

    def release(self, cid: str) -> None: ...


class Job(NamedTuple):
    """One piece of work to send: a row's id and revision when it went out, and its work;
    for a job made from a fresh insert, the rest of what was inserted too.

    A tuple of plain values, and queued as a plain ``tuple``: the garbage collector stops
    tracking a plain tuple of strings, bytes and numbers, and a burst queues thousands of
    jobs, which as objects every full collection would walk.
    """

    id: str
    revision: int
    binding: str
    instance: str
    strategy: str
    work: bytes
    options: str
    retry: str | None
    committed_at: float | None = None  # the insert's commit time; None if not made from it
    chain: bytes = b""
    error_chain: bytes | None = None
    chain_text: str = ""
    error_chain_text: str | None = None
    due_at: float | None = None
    key: str | None = None
    cron: str | None = None
    version: str = ""
    phase: str | None = None
    wait_name: str | None = None

    @classmethod
    def of_new(cls, new: NewContinuation, now: float) -> Job | None:
        """The job of a continuation just committed at ``now``, if its strategy sends work.

        It keeps what was inserted, so the outcome's update needs no read of the row: should
        the row have changed since, the update's fence refuses it.
        """
        if new.strategy not in DISPATCHED or new.work is None:
            return None
        return cls(new.id, 0, new.binding, new.instance, new.strategy, new.work, new.options,
                   new.retry, now, new.chain, new.error_chain, new.chain_text,
                   new.error_chain_text, new.due_at, new.key, new.cron, new.version, new.phase,
                   new.wait_name)  # fmt: skip

    def inserted_row(self) -> ContinuationRow | None:
        """The row as its insert left it, when the job was made from the insert."""
        now = self.committed_at
        if now is None:
            return None
        # Positional, in ContinuationRow's field order: this runs for every job.
        return ContinuationRow(
            self.id, self.binding, self.instance, self.strategy, "pending", self.chain,
            self.error_chain, self.chain_text, self.error_chain_text, self.options, self.retry,
            self.due_at, now if self.due_at is None else self.due_at, 0, None, None, now, now,
            None, self.key, self.cron, self.version, False, 0, self.phase, self.work, None,
            self.wait_name,
        )  # fmt: skip

    @classmethod
    def of_row(cls, row: ContinuationRow, revision: int) -> Job | None:
        """The job of a stored continuation (as of ``revision``), if its strategy sends work."""
        if row.strategy not in DISPATCHED or row.work is None:
            return None
        return cls(row.id, revision, row.binding, row.instance, row.strategy, row.work,
                   row.options, row.retry)  # fmt: skip

    @property
    def timeout(self) -> float | None:
        value = orjson.loads(self.options).get("timeout")
        return None if value is None else float(value)


class Dispatcher:
    """Runs each job and stores its outcome: a fetch or a call to another host in a task of
    its own, calls to one actor of this system in one task per actor, one after another (as
    its turns would run anyway), so a burst costs neither a task nor a wait on the actor's
    turn lock per call.

    Args:
        store: where rows are read back before an outcome is stored.
        committer: commits outcomes.
        runtime: the codec and clock.
        local_calls: runs remote calls whose target lives in this system.
        remotes: sends remote calls to actors of other hosts.
        fetcher: makes the proxy-fetch dispatcher (and its HTTP client) on the first
            fetch, so a system that never fetches never builds one.
        firing: fires the handlers of calls to this system's actors behind their
            deliveries; ``None`` leaves them to the scheduler's reads (on the manual clock,
            or with hosts sharing the database, which fire what they claimed).
    """

    def __init__(
        self,
        *,
        store: Store,
        committer: Committer,
        runtime: Runtime,
        local_calls: LocalCalls,
        remotes: Remotes,
        fetcher: Callable[[], FetchDispatcher],
        firing: DeliveryFiring | None = None,
    ) -> None:
        self._store = store
        self._firing = firing
        self._committer = committer
        self._runtime = runtime
        self._local_calls = local_calls
        self._remotes = remotes
        self._make_fetcher = fetcher
        self._fetcher: FetchDispatcher | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._fetches: set[str] = set()  # ids of the running jobs an abort may stop
        # Jobs beyond MAX_RUNNING as plain tuples, oldest first. An OrderedDict, because a
        # dict's oldest key is found by scanning past every key popped before it: a burst
        # of 100,000 jobs took 5 s of the event loop to start that way.
        self._queue: OrderedDict[str, tuple[object, ...]] = OrderedDict()
        self._actors: dict[str, tuple[str, str]] = {}  # the actor of each running job
        # Calls waiting for their target's task, by target, with the attempt each is on.
        self._lanes: dict[tuple[str, str], list[tuple[Job, RemoteCall, int]]] = {}
        self._lane_tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._idle = asyncio.Event()  # set while no job is out
        self._idle.set()
        self._closed = False

    @property
    def fetcher(self) -> FetchDispatcher:
        """The proxy-fetch dispatcher, made on first use."""
        if self._fetcher is None:
            self._fetcher = self._make_fetcher()
        return self._fetcher

    def dispatch(self, job: Job) -> None:
        """Send ``job``, unless it is already out (or queued)."""
        if self._closed or job.id in self._actors or job.id in self._queue:
            return
        if len(self._actors) >= MAX_RUNNING:
            self._queue[job.id] = tuple(job)
            return
        self._start(job)

    def _start(self, job: Job) -> None:
        self._actors[job.id] = (job.binding, job.instance)
        self._idle.clear()
        if job.strategy == "remote-call":
            work = self._local_work(job)
            if work is not None:
                self._to_lane(job, work, 1)
                return
        if job.strategy == "proxy-fetch":
            self._fetches.add(job.id)
        self._in_task(job.id, self._run(job))

    def _in_task(self, cid: str, work: Coroutine[None, None, None]) -> None:
        """Run a job's ``work`` in a task of its own; the job is over when the task is."""
        task = asyncio.get_running_loop().create_task(work, name=f"work-{cid}")
        self._tasks[cid] = task
        task.add_done_callback(lambda _: self._forget(cid, task))

    def _local_work(self, job: Job) -> RemoteCall | None:
        """The call of a remote-call job whose target lives in this system; ``None`` for a
        call to another host, or work that does not decode (its task reports why)."""
        try:
            work = self._runtime.codec.loads(job.work)
        except Exception:
            return None
        if not isinstance(work, RemoteCall) or work.binding in self._remotes:
            return None
        return work

    def _to_lane(self, job: Job, work: RemoteCall, attempt: int) -> None:
        target = (work.binding, work.instance)
        lane = self._lanes.get(target)
        if lane is None:
            lane = self._lanes[target] = []
            name = f"calls-{work.binding}/{work.instance}"
            task = asyncio.get_running_loop().create_task(self._run_lane(target, lane), name=name)
            self._lane_tasks[target] = task
        lane.append((job, work, attempt))

    async def _run_lane(
        self, target: tuple[str, str], lane: list[tuple[Job, RemoteCall, int]]
    ) -> None:
        """Run the calls to one actor as they come, each batch under one hold of its turn
        lock. A batch does not wait for the commits of the one before: the actor's next
        turns run while those are made durable, as turns waiting on its lock would."""
        try:
            while lane:
                batch = lane[:]
                lane.clear()
                await self._call_batch(batch)
        finally:
            del self._lanes[target]
            del self._lane_tasks[target]
            for job, _, _ in lane:  # cancelled (closing): sent again on the next start
                self._finished(job.id)

    async def _call_batch(self, batch: list[tuple[Job, RemoteCall, int]]) -> None:
        unsettled = {job.id for job, _, _ in batch}
        calls: list[tuple[Job, RemoteCall, int]] = []
        items: list[LocalCall] = []
        # The deliveries whose handler fires from memory once its call's turn is submitted.
        claimed: dict[str, tuple[ContinuationRow, RowUpdate]] | None = (
            None if self._firing is None else {}
        )
        futures: list[asyncio.Future[None] | None] = []
        try:
            for job, work, attempt in batch:
                row = await self._waiting_row(job)
                if row is None:
                    unsettled.discard(job.id)
                    self._finished(job.id)
                else:
                    calls.append((job, work, attempt))
                    items.append((work, self._updater(row, job, claimed), job.id))
            futures = await self._local_calls(items) if items else []
        except BaseException as exc:
            for cid in unsettled:
                if isinstance(exc, Exception):
                    logger.error(
                        "the work of continuation %s failed unexpectedly", cid, exc_info=exc
                    )
                self._finished(cid)
            if isinstance(exc, Exception):
                return
            raise
        finally:
            if claimed:
                self._fire_delivered(calls, futures, claimed)
        # The committer settles in submission order: once the last is done, all are.
        last = next((f for f in reversed(futures) if f is not None), None)
        if last is None:
            self._settle_calls(calls, futures)
        else:
            last.add_done_callback(lambda _: self._settle_calls(calls, futures))

    def _fire_delivered(
        self,
        calls: list[tuple[Job, RemoteCall, int]],
        futures: list[asyncio.Future[None] | None],
        claimed: dict[str, tuple[ContinuationRow, RowUpdate]],
    ) -> None:
        """Fire the handlers of the calls whose delivery was submitted; give back the rest."""
        assert self._firing is not None
        ready = []
        for (job, _, _), future in zip(calls, futures, strict=False):
            if future is not None and (delivery := claimed.pop(job.id, None)) is not None:
                ready.append((after_delivery(*delivery), future))
        for cid in claimed:  # an update made, but not submitted (the batch failed)
            self._firing.release(cid)
        if ready:
            self._firing.fire_claimed(ready)

    def _settle_calls(
        self,
        calls: list[tuple[Job, RemoteCall, int]],
        futures: list[asyncio.Future[None] | None],
    ) -> None:
        """The commits of a batch of calls are settled: each job is over, or goes again."""
        for (job, work, attempt), future in zip(calls, futures, strict=True):
            failed = future is not None and (future.cancelled() or future.exception() is not None)
            if not failed or self._closed:  # closing: what did not commit goes on the next start
                self._finished(job.id)
            elif attempt < _CALL_ATTEMPTS:
                # Nothing of the turn committed: its lease moved (hosts sharing a database),
                # an earlier turn of the target failed to commit, or the store failed. If the
                # row still waits (read again then), the call goes again.
                self._to_lane(job._replace(committed_at=None), work, attempt + 1)
            else:
                self._in_task(
                    job.id, self._note_late(job, "the call's turn could not commit for it")
                )

    async def resume(self) -> int:
        """Send again every job still waiting in the store (after a restart); how many."""
        rows = await self._store.waiting(DISPATCHED)
        for row in rows:
            job = Job.of_row(row, row.revision)
            if job is not None:
                self.dispatch(job)
        return len(rows)

    def abort(self, cid: str) -> None:
        """Stop the fetch of a continuation that no longer waits for it (cancelled, timed
        out). A remote call is left to finish: its turn cannot commit for a caller that
        stopped waiting."""
        if self._queue.pop(cid, None) is not None:
            return  # never started
        if cid in self._fetches:
            self._tasks[cid].cancel()

    @property
    def running(self) -> int:
        """Jobs out or queued."""
        return len(self._actors) + len(self._queue)

    @property
    def busy(self) -> set[tuple[str, str]]:
        """The actors with work out or queued: a host keeps their leases until it is back."""
        queued = (Job._make(values) for values in self._queue.values())
        return set(self._actors.values()) | {(job.binding, job.instance) for job in queued}

    async def settle(self) -> bool:
        """Wait until no job is out (queued ones included); whether there were any."""
        if not self._actors:
            return False
        await self._idle.wait()
        return True

    async def aclose(self) -> None:
        """Stop every job; what they had not stored is sent again on the next start."""
        self._closed = True
        self._queue.clear()
        tasks = [*self._tasks.values(), *self._lane_tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._fetcher is not None:
            await self._fetcher.aclose()

    def _forget(self, cid: str, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("the work of continuation %s failed unexpectedly", cid, exc_info=exc)
        if self._tasks.get(cid) is task:
            del self._tasks[cid]
            self._fetches.discard(cid)
            self._finished(cid)

    def _finished(self, cid: str) -> None:
        """A job is over: start the next one queued."""
        del self._actors[cid]
        if self._queue and not self._closed:
            self._start(Job._make(self._queue.popitem(last=False)[1]))
        elif not self._actors:
            self._idle.set()

    async def _run(self, job: Job) -> None:
        if job.strategy == "proxy-fetch":
            outcome = await self._fetch(job)
            await self._store_outcome(job, outcome)
            return
        work = self._runtime.codec.loads(job.work)
        assert isinstance(work, RemoteCall)
        if work.binding in self._remotes:
            # Sent with the continuation id as its idempotency key: if this is a second
            # sending (after a restart, or a lost answer), the host answers from its store.
            try:
                async with asyncio.timeout(job.timeout):
                    outcome = await self._remotes.call(work, key=job.id)
            except TimeoutError:
                return  # the durable timeout delivers it
            await self._store_outcome(job, outcome)
            return
        raise AssertionError(f"a call to {work.binding!r}, served here, went to a task")

    async def _fetch(self, job: Job) -> Outcome:
        request = self._runtime.codec.loads(job.work)
        assert isinstance(request, FetchRequest)
        retry = _retry_policy(job.retry) or self._runtime.retry
        try:
            response = await self.fetcher.fetch(
                request,
                idempotency_key=job.id,
                timeout=job.timeout if job.timeout is not None else float("inf"),
                retry=retry,
            )
        except FetchError as exc:
            return "error", exc
        return "ok", response

    async def _store_outcome(self, job: Job, outcome: Outcome) -> None:
        row = await self._waiting_row(job)
        if row is None:
            return
        update = self._updater(row, job)(outcome)
        commit = Commit(job.binding, job.instance, self._runtime.clock.now(), update=update,
                        standalone=True)  # fmt: skip
        try:
            await self._committer.submit(commit, None)
        except CommitError:
            await self._note_late(job, "the continuation changed while the outcome was stored")

    def _updater(
        self,
        row: ContinuationRow,
        job: Job,
        claimed: dict[str, tuple[ContinuationRow, RowUpdate]] | None = None,
    ) -> Callable[[Outcome], RowUpdate]:
        """What stores an outcome for ``row``; with ``claimed``, the update is also kept
        there if the scheduler lets its handler fire from memory."""
        codec = self._runtime.codec

        def outcome_of(outcome: Outcome) -> RowUpdate:
            event = "result received" if outcome[0] == "ok" else "error received"
            now = self._runtime.clock.now()
            update = delivered(row, now, encode_outcome(codec, outcome), f"{job.strategy} {event}")
            if claimed is not None and self._firing is not None and self._firing.claim(job.id):
                claimed[job.id] = (row, update)
            return update

        return outcome_of

    async def _waiting_row(self, job: Job) -> ContinuationRow | None:
        """The job's row if it still waits for this job's outcome; else note why not."""
        row = job.inserted_row()
        if row is None:
            row = await self._store.get(job.id)
        if row is not None and row.revision == job.revision and row.phase == "waiting":
            return row
        await self._note_late(job, "the continuation no longer waits for it")
        return None

    async def _note_late(self, job: Job, why: str) -> None:
        """Record that an outcome came too late (after a timeout or a cancellation)."""
        note = (job.id, "late outcome ignored", why)
        commit = Commit(job.binding, job.instance, self._runtime.clock.now(), notes=[note],
                        standalone=True)  # fmt: skip
        try:
            await self._committer.submit(commit, None)
        except Exception:  # closing, or the store failed: the note is only a note
            logger.info("could not record the late outcome of continuation %s", job.id)


def _retry_policy(data: str | None) -> RetryPolicy | None:
    if data is None:
        return None
    try:
        return RetryPolicy.model_validate_json(data)
    except ValidationError:
        return None
