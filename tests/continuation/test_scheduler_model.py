"""A Hypothesis state machine checks the scheduler against a small pure-Python model.

The machine schedules alarms (due now, later or already overdue; with or without a dedup
key and an error chain; with handlers that fail a few times before they succeed), cancels
them from outside and from inside turns, moves the manual clock, fixes and re-queues dead
ones, and closes or crashes the system and reopens its database. After every step the
database, the actors' storage and the model agree on every status, attempt count and due
time, and every handler's effect is applied once per successful firing.

A crash is simulated at the store: from the instant of the crash every store call fails, so
the database keeps exactly what had committed when the "process died", and nothing the dying
system does afterwards reaches it. A crash in the middle of ``advance`` may cut any
continuation's history short, so there the model accepts any prefix of each continuation's
firings, as long as its storage effects match the same prefix.

The machine runs on an SQLite file (``TestSchedulerModel``) and on a PostgreSQL schema of its
own per example (``TestSchedulerModelPostgres``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from continuation import (
    Actor,
    ActorRef,
    ActorSystem,
    AlarmInfo,
    Continuation,
    ContinuationCancelled,
    ContinuationStateError,
    ManualClock,
    RetryPolicy,
    StoreError,
)
from continuation._store.base import AuditRow, Commit, ContinuationRow, Refusal, Store
from tests.postgres import PostgresDatabase, postgres_admin

from .conftest import START, OpenSystem

T = TypeVar("T")

INSTANCES = ("a", "b")
KEYS = ("k",)
DEFAULT_RETRY = RetryPolicy(max_attempts=2, base_delay=2.0, max_delay=4.0, jitter=0.0)
# Idle actors are evicted between steps, so reactivation from the database is exercised too.
IDLE_TIMEOUT = 4.0


class Crash(BaseException):
    """The process dies inside a handler. A BaseException, so no ``except Exception`` in the
    runtime treats it as an ordinary handler failure."""


class Flaky(Exception):
    """A handler's planned failure."""


# -- the simulated crash ---------------------------------------------------------------------


class KillableStore:
    """Passes every call to the real store until killed; then every call fails, as if the
    process had died at that instant. ``close`` still reaches the real connection, so the
    test releases it (closing writes nothing)."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.dead = False

    def kill(self) -> None:
        self.dead = True

    def _live(self) -> Store:
        if self.dead:
            raise StoreError("the process died")
        return self._inner

    async def open(self) -> None:
        await self._live().open()

    async def close(self) -> None:
        await self._inner.close()

    async def apply(self, commits: Sequence[Commit]) -> dict[int, Refusal]:
        return await self._live().apply(commits)

    async def load_actor(
        self, binding: str, instance: str
    ) -> tuple[dict[str, bytes], dict[str, str]]:
        return await self._live().load_actor(binding, instance)

    async def fetch_due(
        self, now: float, limit: int, *, skip: AbstractSet[str] = frozenset()
    ) -> list[ContinuationRow]:
        return await self._live().fetch_due(now, limit, skip=skip)

    async def next_due(self, *, skip: AbstractSet[str] = frozenset()) -> float | None:
        return await self._live().next_due(skip=skip)

    async def waiting(self, strategies: Sequence[str]) -> list[ContinuationRow]:
        return await self._live().waiting(strategies)

    async def get(self, cid: str) -> ContinuationRow | None:
        return await self._live().get(cid)

    async def find(
        self,
        *,
        statuses: Sequence[str] | None,
        binding: str | None,
        instance: str | None,
        limit: int,
    ) -> list[ContinuationRow]:
        return await self._live().find(
            statuses=statuses, binding=binding, instance=instance, limit=limit
        )

    async def audit(self, cid: str) -> list[AuditRow]:
        return await self._live().audit(cid)

    async def call_result(self, binding: str, instance: str, key: str) -> bytes | None:
        return await self._live().call_result(binding, instance, key)

    async def purge(self, *, finished_before: float, statuses: Sequence[str]) -> int:
        return await self._live().purge(finished_before=finished_before, statuses=statuses)


@dataclass
class CrashPlan:
    """Lets ``after`` more handler firings through, then kills the store and raises ``Crash``
    from the next one, before it has any effect."""

    store: KillableStore | None = None
    after: int | None = None

    def firing(self) -> None:
        if self.after is None or self.store is None:
            return
        if self.after > 0:
            self.after -= 1
            return
        self.after = None
        self.store.kill()
        raise Crash


# One machine runs at a time, and the actors it runs need to reach its plan.
PLAN = CrashPlan()


# -- the actor -------------------------------------------------------------------------------


class Worker(Actor):
    def schedule(
        self,
        tag: int,
        delay: float,
        fails: int,
        error_chain: bool,
        key: str | None,
        retry: RetryPolicy | None,
    ) -> str:
        c = Continuation(self)
        on_error = c.on_error(tag, c.error) if error_chain else None
        return self.continue_(
            c.fire(tag, fails, c.result), on_error, strategy="alarm", delay=delay, key=key,
            retry=retry,
        )  # fmt: skip

    def fire(self, tag: int, fails: int, info: AlarmInfo) -> None:
        PLAN.firing()
        # Failing by attempt number keeps the plan durable: a failed turn leaves no trace.
        if info.attempt <= fails and not self.storage.get(f"fixed:{tag}", False):
            raise Flaky(f"{tag} fails attempt {info.attempt}")
        self.storage.put(f"fired:{tag}", self.storage.get(f"fired:{tag}", 0) + 1)

    def on_error(self, tag: int, error: Exception) -> None:
        PLAN.firing()
        self.storage.put(f"cancelled:{tag}", self.storage.get(f"cancelled:{tag}", 0) + 1)
        self.storage.put(f"error:{tag}", type(error).__name__)

    def fix(self, tag: int) -> None:
        self.storage.put(f"fixed:{tag}", True)

    def cancel_in_turn(self, cid: str) -> None:
        self.cancel_continuation(cid)

    def effects(self) -> dict[str, Any]:
        return self.storage.list()


# -- the model -------------------------------------------------------------------------------


@dataclass
class Expected:
    """What one continuation should look like, and what its handlers should have done."""

    cid: str
    tag: int
    instance: str
    fails: int
    error_chain: bool
    key: str | None
    retry: RetryPolicy
    due: float | None
    status: str = "pending"
    attempts: int = 0
    cancel_requested: bool = False
    fired: int = 0
    deliveries: int = 0

    def holds_key(self, instance: str, key: str) -> bool:
        return (
            self.instance == instance
            and self.key == key
            and self.status == "pending"
            and not self.cancel_requested
        )

    def observed(self) -> Observed:
        return Observed(
            self.status, self.attempts, self.due, self.cancel_requested, self.fired, self.deliveries
        )


@dataclass(frozen=True)
class Observed:
    """One continuation as the database and its actor's storage show it."""

    status: str
    attempts: int
    due: float | None
    cancel_requested: bool
    fired: int
    deliveries: int


class Model:
    """The scheduler in a few lines: due continuations fire in (due, id) order, each at its
    due time or, when overdue, at the current time."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.conts: dict[str, Expected] = {}
        self.fixed: set[int] = set()

    def key_holder(self, instance: str, key: str | None) -> Expected | None:
        if key is None:
            return None
        return next((c for c in self.conts.values() if c.holds_key(instance, key)), None)

    def pending_due(self, until: float) -> list[Expected]:
        return [c for c in self.conts.values() if c.status == "pending" and (c.due or 0.0) <= until]

    def advance(self, seconds: float) -> dict[str, list[Expected]]:
        """Fire what falls due; return each fired continuation's states, before and after
        each of its firings."""
        target = self.now + seconds
        history: dict[str, list[Expected]] = {}
        while due := self.pending_due(target):
            c = min(due, key=lambda c: (c.due or 0.0, c.cid))
            self.now = max(self.now, c.due or 0.0)
            history.setdefault(c.cid, [replace(c)])
            self.fire(c)
            history[c.cid].append(replace(c))
        self.now = target
        return history

    def fire(self, c: Expected) -> None:
        attempt = c.attempts + 1
        c.attempts = attempt
        if c.cancel_requested:
            c.status, c.due = "cancelled", None
            c.deliveries += 1
        elif attempt <= c.fails and c.tag not in self.fixed:
            if attempt >= c.retry.max_attempts:
                c.status, c.due = "dead", None
            else:
                backoff = min(c.retry.max_delay, c.retry.base_delay * 2 ** (attempt - 1))
                c.due = self.now + backoff
        else:
            c.status, c.due = "completed", None
            c.fired += 1

    def cancel(self, c: Expected) -> None:
        if not c.error_chain:
            c.status, c.due = "cancelled", None
            return
        c.cancel_requested, c.due, c.attempts = True, self.now, 0

    def expected_effects(self, instance: str) -> dict[str, Any]:
        effects: dict[str, Any] = {}
        for c in self.conts.values():
            if c.instance != instance:
                continue
            if c.fired:
                effects[f"fired:{c.tag}"] = c.fired
            if c.deliveries:
                effects[f"cancelled:{c.tag}"] = c.deliveries
                effects[f"error:{c.tag}"] = ContinuationCancelled.__name__
            if c.tag in self.fixed:
                effects[f"fixed:{c.tag}"] = True
        return effects


# -- the machine -----------------------------------------------------------------------------

retry_policies = st.none() | st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 3),
    base_delay=st.sampled_from([0.0, 1.0, 3.0]),
    max_delay=st.just(4.0),
    jitter=st.just(0.0),
)
steps = st.sampled_from([0.0, 1.0, 2.0, 3.0, 5.0, 10.0])
schedules = st.fixed_dictionaries(
    {
        "instance": st.sampled_from(INSTANCES),
        "delay": st.sampled_from([-3.0, 0.0, 0.0, 1.0, 2.0, 5.0]),
        "fails": st.integers(0, 3),
        "error_chain": st.booleans(),
        "key": st.none() | st.sampled_from(KEYS),
        "retry": retry_policies,
    }
)


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.database = self.create_database()  # first: it may skip the test
        self.loop = asyncio.new_event_loop()
        self.model = Model(START.timestamp())
        self.next_tag = 0
        self.system = self.run(self.open())

    def create_database(self) -> str:
        """A new database for one example: its ``database`` argument."""
        self.directory = Path(tempfile.mkdtemp(prefix="scheduler-model-"))
        return str(self.directory / "actors.db")

    def drop_database(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def teardown(self) -> None:
        try:
            self.run(self.close(abandon=False))
        finally:
            PLAN.store, PLAN.after = None, None
            self.loop.close()
            self.drop_database()

    # -- plumbing ----------------------------------------------------------------------------

    def run(self, awaitable: Awaitable[T]) -> T:
        async def main() -> T:
            return await awaitable

        return self.loop.run_until_complete(main())

    async def open(self) -> ActorSystem:
        system = ActorSystem(
            self.database,
            actors=[Worker],
            clock=ManualClock(start=self.model.now),
            retry=DEFAULT_RETRY,
            idle_timeout=IDLE_TIMEOUT,
            # Only a crash of the process is simulated, never a power loss.
            durability="normal",
        )
        # The store is the one seam where a process death can be simulated in-process.
        store = PLAN.store = KillableStore(system._store)
        system._store = store
        await system.start()
        return system

    async def close(self, *, abandon: bool) -> None:
        """Close the system; with ``abandon``, as a dead process: nothing more is written."""
        if abandon:
            assert PLAN.store is not None
            PLAN.store.kill()
        # Let what the system left running (firings cut short by a crash, housekeeping) run
        # to its end first, so no task outlives the event loop.
        me = asyncio.current_task()
        while others := [
            t
            for t in asyncio.all_tasks()
            if t is not me and t.get_name() != "continuation-committer"
        ]:
            _, pending = await asyncio.wait(others, timeout=30)
            assert not pending, f"tasks left hanging: {pending}"
        await self.system.aclose()

    def ref(self, instance: str) -> ActorRef:
        return self.system.get(Worker, instance)

    def pick(
        self, index: int, statuses: Sequence[str] = (), *, failing: bool = False
    ) -> Expected | None:
        conts = [
            c
            for c in self.model.conts.values()
            if (not statuses or c.status in statuses) and (c.fails or not failing)
        ]
        return conts[index % len(conts)] if conts else None

    async def observe(self) -> dict[str, Observed]:
        infos = await self.system.continuations(limit=100_000)
        effects = {i: await self.ref(i).effects() for i in INSTANCES}
        tags = {c.cid: (c.instance, c.tag) for c in self.model.conts.values()}
        observed = {}
        for info in infos:
            assert info.id in tags, f"a continuation the model never scheduled: {info}"
            instance, tag = tags[info.id]
            observed[info.id] = Observed(
                info.status.value,
                info.attempts,
                None if info.due_at is None else info.due_at.timestamp(),
                info.cancel_requested,
                effects[instance].get(f"fired:{tag}", 0),
                effects[instance].get(f"cancelled:{tag}", 0),
            )
        return observed

    # -- rules -------------------------------------------------------------------------------

    @initialize(options=st.lists(schedules, min_size=1, max_size=4))
    def start_with(self, options: list[dict[str, Any]]) -> None:
        for one in options:
            self.schedule(one)

    @rule(options=schedules)
    def schedule(self, options: dict[str, Any]) -> None:
        self.add(**options)

    def add(
        self,
        instance: str,
        delay: float,
        fails: int,
        error_chain: bool,
        key: str | None,
        retry: RetryPolicy | None,
    ) -> None:
        tag, self.next_tag = self.next_tag, self.next_tag + 1
        cid = self.run(self.ref(instance).schedule(tag, delay, fails, error_chain, key, retry))
        holder = self.model.key_holder(instance, key)
        if holder is not None:
            assert cid == holder.cid, "a second continue_ with a held key made a new one"
            return
        assert cid not in self.model.conts
        self.model.conts[cid] = Expected(
            cid, tag, instance, fails, error_chain, key, retry or DEFAULT_RETRY,
            due=self.model.now + max(delay, 0.0),
        )  # fmt: skip

    @rule(index=st.integers(min_value=0), pending_only=st.booleans())
    def cancel(self, index: int, pending_only: bool) -> None:
        c = self.pick(index, ["pending"] if pending_only else [])
        if c is None:
            return
        if c.status != "pending" or c.cancel_requested:
            with pytest.raises(ContinuationStateError):
                self.run(self.system.cancel(c.cid))
            return
        self.run(self.system.cancel(c.cid))
        self.model.cancel(c)

    @rule(index=st.integers(min_value=0), instance=st.sampled_from(INSTANCES))
    def cancel_in_turn(self, index: int, instance: str) -> None:
        """From a turn of either actor: another actor's or a finished id is ignored."""
        c = self.pick(index)
        if c is None:
            return
        self.run(self.ref(instance).cancel_in_turn(c.cid))
        if c.instance == instance and c.status == "pending" and not c.cancel_requested:
            self.model.cancel(c)

    @rule(seconds=steps)
    def advance(self, seconds: float) -> None:
        self.model.advance(seconds)
        self.run(self.system.advance(seconds))
        overdue = self.run(self.system.continuations(status="pending"))
        now = self.model.now
        assert all(i.due_at is not None and i.due_at.timestamp() > now for i in overdue)

    @rule(index=st.integers(min_value=0), dead_only=st.booleans())
    def retry(self, index: int, dead_only: bool) -> None:
        c = self.pick(index, ["dead"] if dead_only else [])
        if c is None:
            return
        if c.status != "dead" or self.model.key_holder(c.instance, c.key) is not None:
            # Not dead, or its dedup key now belongs to another pending continuation.
            with pytest.raises(ContinuationStateError):
                self.run(self.system.retry(c.cid))
            return
        self.run(self.system.retry(c.cid))
        event("re-queued a dead continuation")
        c.status, c.due, c.attempts = "pending", self.model.now, 0

    @rule(index=st.integers(min_value=0))
    def fix(self, index: int) -> None:
        """Make a failing handler succeed from now on, as a deploy would."""
        c = self.pick(index, failing=True)
        if c is None:
            return
        self.run(self.ref(c.instance).fix(c.tag))
        self.model.fixed.add(c.tag)

    @rule(abandon=st.booleans())
    def reopen(self, abandon: bool) -> None:
        """Close (or abandon, as a killed process) and reopen on the same file."""
        self.run(self.close(abandon=abandon))
        self.system = self.run(self.open())

    @rule(seconds=steps, after=st.integers(0, 3))
    def crash_during_advance(self, seconds: float, after: int) -> None:
        """Die in the middle of the ``after + 1``-th firing, then reopen."""
        history = self.model.advance(seconds)
        PLAN.after = after
        try:
            self.run(self.system.advance(seconds))
        except Crash:
            event("crashed in the middle of advance")
        else:
            return
        finally:
            PLAN.after = None
        self.reopen(abandon=True)
        observed = self.run(self.observe())
        for cid, states in history.items():
            matches = [s for s in states if s.observed() == observed[cid]]
            assert matches, f"{observed[cid]} is none of the model's states {states}"
            self.model.conts[cid] = matches[-1]

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        observed = self.run(self.observe())
        assert observed == {cid: c.observed() for cid, c in self.model.conts.items()}
        for instance in INSTANCES:
            effects = self.run(self.ref(instance).effects())
            assert effects == self.model.expected_effects(instance)

    @invariant()
    def a_cancellation_reaches_an_error_chain_once(self) -> None:
        cancelled = self.run(self.system.continuations(status="cancelled", limit=100_000))
        effects = {i: self.run(self.ref(i).effects()) for i in INSTANCES}
        tags = {c.cid: c.tag for c in self.model.conts.values()}
        for info in cancelled:
            tag, mine = tags[info.id], effects[info.instance]
            if info.error_chain is None:
                assert f"cancelled:{tag}" not in mine
            else:
                assert mine[f"cancelled:{tag}"] == 1
                assert mine[f"error:{tag}"] == ContinuationCancelled.__name__


class PostgresSchedulerMachine(SchedulerMachine):
    """The same machine on a PostgreSQL schema of its own per example."""

    def create_database(self) -> str:
        admin = postgres_admin()  # skips the test when no server is reachable
        self.postgres = PostgresDatabase(admin, admin.create_schema(migrated=True))
        return self.postgres.url

    def drop_database(self) -> None:
        self.postgres.admin.drop_schema(self.postgres.schema)


TestSchedulerModel = SchedulerMachine.TestCase
TestSchedulerModel.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestSchedulerModelPostgres = PostgresSchedulerMachine.TestCase
TestSchedulerModelPostgres.settings = TestSchedulerModel.settings


# -- bugs the machine found, pinned as plain tests --------------------------------------------

NO_RETRY = RetryPolicy(max_attempts=1, jitter=0.0)


async def test_a_dead_continuation_frees_its_key(open_system: OpenSystem) -> None:
    async with open_system(Worker) as system:
        ref = system.get(Worker, "a")
        dead = await ref.schedule(1, 0, 1, False, "k", NO_RETRY)
        await system.advance(0)
        assert (await system.continuation(dead)).status == "dead"
        fresh = await ref.schedule(2, 0, 0, False, "k", NO_RETRY)
        assert fresh != dead
        await system.advance(0)
        assert (await ref.effects()).get("fired:2") == 1


async def test_a_cancellation_delivery_keeps_a_newer_continuations_key(
    open_system: OpenSystem,
) -> None:
    async with open_system(Worker) as system:
        ref = system.get(Worker, "a")
        old = await ref.schedule(1, 10, 0, True, "k", None)
        await system.cancel(old)
        new = await ref.schedule(2, 10, 0, False, "k", None)
        assert new != old
        await system.advance(0)
        assert (await system.continuation(old)).status == "cancelled"
        assert await ref.schedule(3, 10, 0, False, "k", None) == new


async def test_cancel_from_a_turn_resets_attempts_like_system_cancel(
    open_system: OpenSystem,
) -> None:
    policy = RetryPolicy(max_attempts=3, base_delay=1.0, max_delay=1.0, jitter=0.0)
    async with open_system(Worker) as system:
        ref = system.get(Worker, "a")
        outside = await ref.schedule(1, 0, 9, True, None, policy)
        inside = await ref.schedule(2, 0, 9, True, None, policy)
        await system.advance(0)
        await system.cancel(outside)
        await ref.cancel_in_turn(inside)
        infos = [await system.continuation(cid) for cid in (outside, inside)]
        assert [(i.cancel_requested, i.attempts) for i in infos] == [(True, 0), (True, 0)]


async def test_close_right_after_advance_leaves_nothing_running(
    open_system: OpenSystem, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_system(Worker) as system:
        await system.advance(0)
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not me]
    if left:
        await asyncio.wait(left)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert left == []
