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
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import orjson
from pydantic import ValidationError

from ._committer import Committer
from ._errors import CommitError
from ._fetch import FetchDispatcher, FetchError, FetchRequest
from ._options import RetryPolicy
from ._outcomes import delivered
from ._remote import Remotes
from ._store.base import Commit, ContinuationRow, NewContinuation, RowUpdate, Store
from ._turn import Runtime
from ._work import DISPATCHED, Outcome, RemoteCall, encode_outcome

logger = logging.getLogger("continuation")

_CALL_ATTEMPTS: Final = 5
"""Times a same-system remote call is run before its failure to commit is final; the row
then waits for its timeout, which delivers the failure."""

MAX_RUNNING: Final = 256
"""Jobs running at once; more wait in a queue (as data, not as tasks), so a burst of
thousands costs neither memory nor garbage-collection time per waiting job."""

LocalCall = Callable[[RemoteCall, Callable[[Outcome], RowUpdate], str], Awaitable[None]]
"""Runs a remote call (with its idempotency key) in a turn of an actor of this system; the
update that stores its outcome for the caller commits in that turn's transaction (or alone,
when the call raised or ran on another host sharing the database)."""


@dataclass(frozen=True, slots=True)
class Job:
    """One piece of work to send: a row's id and revision when it went out, and its work."""

    id: str
    revision: int
    binding: str
    instance: str
    strategy: str
    work: bytes
    options: str
    retry: str | None
    new: NewContinuation | None = None  # what was inserted, when that is known
    committed_at: float = 0.0

    @classmethod
    def of_new(cls, new: NewContinuation, now: float) -> Job | None:
        """The job of a continuation just committed at ``now``, if its strategy sends work.

        It keeps what was inserted, so the outcome's update needs no read of the row: should
        the row have changed since, the update's fence refuses it.
        """
        if new.strategy not in DISPATCHED or new.work is None:
            return None
        return cls(new.id, 0, new.binding, new.instance, new.strategy, new.work, new.options,
                   new.retry, new, now)  # fmt: skip

    def inserted_row(self) -> ContinuationRow | None:
        """The row as its insert left it, when the job was made from the insert."""
        new, now = self.new, self.committed_at
        if new is None:
            return None
        return ContinuationRow(
            id=new.id, binding=new.binding, instance=new.instance, strategy=new.strategy,
            status="pending", chain=new.chain, error_chain=new.error_chain,
            chain_text=new.chain_text, error_chain_text=new.error_chain_text,
            options=new.options, retry=new.retry, due_at=new.due_at,
            scheduled_at=now if new.due_at is None else new.due_at, attempts=0,
            last_error=None, last_traceback=None, created_at=now, updated_at=now,
            finished_at=None, key=new.key, cron=new.cron, version=new.version,
            cancel_requested=False, revision=0, phase=new.phase, work=new.work,
            wait_name=new.wait_name,
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
    """Runs each job in a task of its own and stores its outcome.

    Args:
        store: where rows are read back before an outcome is stored.
        committer: commits outcomes.
        runtime: the codec and clock.
        local_call: runs a remote call whose target lives in this system.
        remotes: sends remote calls to actors of other hosts.
        fetcher: makes the proxy-fetch dispatcher (and its HTTP client) on the first
            fetch, so a system that never fetches never builds one.
    """

    def __init__(
        self,
        *,
        store: Store,
        committer: Committer,
        runtime: Runtime,
        local_call: LocalCall,
        remotes: Remotes,
        fetcher: Callable[[], FetchDispatcher],
    ) -> None:
        self._store = store
        self._committer = committer
        self._runtime = runtime
        self._local_call = local_call
        self._remotes = remotes
        self._make_fetcher = fetcher
        self._fetcher: FetchDispatcher | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._fetches: set[str] = set()  # ids of the running jobs an abort may stop
        self._queue: dict[str, Job] = {}  # waiting for a free task, in dispatch order
        self._actors: dict[str, tuple[str, str]] = {}  # the actor of each running job
        self._closed = False

    @property
    def fetcher(self) -> FetchDispatcher:
        """The proxy-fetch dispatcher, made on first use."""
        if self._fetcher is None:
            self._fetcher = self._make_fetcher()
        return self._fetcher

    def dispatch(self, job: Job) -> None:
        """Send ``job`` in a task of its own, unless it is already out (or queued)."""
        if self._closed or job.id in self._tasks or job.id in self._queue:
            return
        if len(self._tasks) >= MAX_RUNNING:
            self._queue[job.id] = job
            return
        self._start(job)

    def _start(self, job: Job) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"work-{job.id}")
        self._tasks[job.id] = task
        self._actors[job.id] = (job.binding, job.instance)
        if job.strategy == "proxy-fetch":
            self._fetches.add(job.id)
        task.add_done_callback(lambda _: self._forget(job.id, task))

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
        return len(self._tasks) + len(self._queue)

    @property
    def busy(self) -> set[tuple[str, str]]:
        """The actors with work out or queued: a host keeps their leases until it is back."""
        return set(self._actors.values()) | {(j.binding, j.instance) for j in self._queue.values()}

    async def settle(self) -> bool:
        """Wait until no job is out (queued ones included); whether there were any."""
        if not self._tasks:
            return False
        while self._tasks:
            await asyncio.wait(list(self._tasks.values()))
        return True

    async def aclose(self) -> None:
        """Stop every job; what they had not stored is sent again on the next start."""
        self._closed = True
        self._queue.clear()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._fetcher is not None:
            await self._fetcher.aclose()

    def _forget(self, cid: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(cid) is task:
            del self._tasks[cid]
            del self._actors[cid]
            self._fetches.discard(cid)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("the work of continuation %s failed unexpectedly", cid, exc_info=exc)
        if self._queue and not self._closed:
            queued = next(iter(self._queue))
            self._start(self._queue.pop(queued))

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
        for _ in range(_CALL_ATTEMPTS):
            row = await self._waiting_row(job)
            if row is None:
                return
            outcome_of = self._updater(row, job)
            try:
                await self._local_call(work, outcome_of, job.id)
            except CommitError:
                # Nothing of the turn committed: its lease moved (hosts sharing a database),
                # an earlier turn of the target failed to commit, or the store failed. If the
                # row still waits (read again above), send the call again.
                job = dataclasses.replace(job, new=None)
                continue
            return
        await self._note_late(job, "the call's turn could not commit for it")

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

    def _updater(self, row: ContinuationRow, job: Job) -> Callable[[Outcome], RowUpdate]:
        codec = self._runtime.codec

        def outcome_of(outcome: Outcome) -> RowUpdate:
            event = "result received" if outcome[0] == "ok" else "error received"
            now = self._runtime.clock.now()
            return delivered(row, now, encode_outcome(codec, outcome), f"{job.strategy} {event}")

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
