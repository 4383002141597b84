"""Same-system remote calls on the real clock: the caller's handler fires from memory right
behind the turn that delivers its outcome, and commits only if that delivery does.

On the manual clock nothing fires until the test advances it, so these run on the real
clock; they wait for turns and commits, never for a timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from continuation import (
    Actor,
    ActorSystem,
    CommitError,
    Continuation,
    ContinuationStatus,
    StoreError,
)
from continuation._committer import Committer
from continuation._outcomes import after_delivery, completed, delivered
from continuation._store.base import Commit, NewContinuation
from continuation._store.sqlite import SQLiteStore

from .conftest import hook_commits, state_of


class Ledger(Actor):
    def record(self, amount: int) -> int:
        self.storage.put("total", self.storage.get("total", 0) + amount)
        return amount * 2

    def total(self) -> int:
        return int(self.storage.get("total", 0))


class Till(Actor):
    ran: ClassVar[list[int]] = []  # handler runs in this process, effects committed or not

    def pay(self, amount: int) -> str:
        c = Continuation(self)
        ledger = Continuation(Ledger)
        return self.continue_(
            c.paid(c.result), strategy="remote-call", binding="Ledger", instance="l",
            call=ledger.record(amount),
        )  # fmt: skip

    def paid(self, doubled: int) -> None:
        Till.ran.append(doubled)
        self.storage.put("paid", self.storage.get("paid", 0) + doubled)

    def total(self) -> int:
        return int(self.storage.get("paid", 0))


@pytest.fixture(autouse=True)
def _fresh_runs() -> None:
    Till.ran = []


def delivers(commits: Sequence[Commit]) -> bool:
    return any(c.update is not None and c.update.phase == "ready" for c in commits)


async def test_the_handler_fires_from_memory_not_from_a_read_of_the_row(tmp_path: Path) -> None:
    async with ActorSystem(tmp_path / "a.db", actors=[Till, Ledger]) as system:
        read: list[str] = []
        fetch_due = system._store.fetch_due

        async def spying(*args: Any, **kwargs: Any) -> Any:
            rows = await fetch_due(*args, **kwargs)
            read.extend(row.id for row in rows)
            return rows

        system._store.fetch_due = spying  # type: ignore[method-assign]
        cids = [await system.get(Till, "t").pay(n) for n in (1, 2, 3)]
        await system.drain()
        assert await system.get(Till, "t").total() == 12
        assert await system.get(Ledger, "l").total() == 6
        for cid in cids:
            info = await system.continuation(cid)
            assert info.status == ContinuationStatus.COMPLETED
            assert [e.event for e in info.audit].count("remote-call result received") == 1
        assert not set(read) & set(cids)
        assert sorted(Till.ran) == [2, 4, 6]


async def test_a_handler_behind_a_delivery_that_fails_to_commit_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first delivery's batch fails (and again when its turns are tried one by one): the
    # handler fired behind it must not commit, the call goes again, and in the end the
    # target's effect and the handler's are each applied once.
    async with ActorSystem(tmp_path / "a.db", actors=[Till, Ledger]) as system:
        failures = 0

        def fail_deliveries(commits: Sequence[Commit], n: int) -> None:
            nonlocal failures
            if delivers(commits) and failures < 2:
                failures += 1
                raise StoreError("the disk is full")

        hook_commits(monkeypatch, system, fail_deliveries)
        cid = await system.get(Till, "t").pay(5)
        await system.drain()
        assert failures == 2
        # It ran behind the failed deliveries too, and none of those runs committed.
        assert len(Till.ran) > 1
        assert set(Till.ran) == {10}
        assert (await system.continuation(cid)).status == ContinuationStatus.COMPLETED
        assert await system.get(Ledger, "l").total() == 5
        assert await system.get(Till, "t").total() == 10
    # Nothing in memory hid a lost effect: a fresh system reads the same.
    async with ActorSystem(tmp_path / "a.db", actors=[Till, Ledger]) as system:
        assert await system.get(Ledger, "l").total() == 5
        assert await system.get(Till, "t").total() == 10


async def test_a_delivery_never_submitted_gives_its_row_back_to_the_scheduler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The call's turn ran and its delivery was made, but submitting it failed: nothing of
    # it is stored, the row is not left marked as firing, and the next start sends the
    # call again.
    async with ActorSystem(tmp_path / "a.db", actors=[Till, Ledger]) as system:
        submit = system._committer.submit

        def refuse_deliveries(commit: Commit, *args: Any, **kwargs: Any) -> Any:
            if commit.update is not None and commit.update.phase == "ready":
                raise RuntimeError("the committer broke")
            return submit(commit, *args, **kwargs)

        monkeypatch.setattr(system._committer, "submit", refuse_deliveries)
        cid = await system.get(Till, "t").pay(7)
        await system.drain()
        assert cid not in system._scheduler.in_flight
        assert "failed unexpectedly" in caplog.text
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.PENDING  # not "running": released
        monkeypatch.undo()
    async with ActorSystem(tmp_path / "a.db", actors=[Till, Ledger]) as system:
        await system.drain()
        assert (await system.continuation(cid)).status == ContinuationStatus.COMPLETED
        assert await system.get(Ledger, "l").total() == 7
        assert await system.get(Till, "t").total() == 14
        assert Till.ran == [14]


async def test_a_row_already_firing_cannot_be_claimed_until_its_firing_is_over(
    tmp_path: Path,
) -> None:
    async with ActorSystem(tmp_path / "a.db", actors=[Till, Ledger]) as system:
        scheduler = system._scheduler
        assert scheduler.claim("c1")
        assert not scheduler.claim("c1")
        assert "c1" in scheduler.in_flight
        scheduler.release("c1")
        assert "c1" not in scheduler.in_flight
        assert scheduler.claim("c1")
        scheduler.release("c1")


async def test_many_calls_fire_their_handlers_once_each(tmp_path: Path) -> None:
    # Enough at once that deliveries and the handlers behind them share transactions.
    async with ActorSystem(tmp_path / "a.db", actors=[Till, Ledger]) as system:
        tills = [system.get(Till, f"t{n}") for n in range(10)]
        await asyncio.gather(*(till.pay(n) for n, till in enumerate(tills) for _ in range(30)))
        await system.drain()
        assert [await till.total() for till in tills] == [60 * n for n in range(10)]
        assert await system.get(Ledger, "l").total() == 30 * sum(range(10))
        assert len(Till.ran) == 300
        done = await system.continuations(status="completed", limit=1000)
        assert len(done) == 300


# -- the committer's side ----------------------------------------------------------------------


async def test_a_commit_after_another_in_its_batch_is_applied_only_with_it(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "c.db"), durability="normal")
    await store.open()
    try:
        committer = Committer(store, on_committed=lambda _: None, on_lost=lambda _: None)
        now = 1_000.0
        new = NewContinuation("c1", "T", "t", "remote-call", b"chain", None, "f()", None, "{}",
                              None, None, None, None, "1", phase="waiting", work=b"w")  # fmt: skip
        await committer.submit(Commit("T", "t", now, new=[new]), None)
        row = await store.get("c1")
        assert row is not None

        def delivery(revision: int) -> Commit:
            update = delivered(row, now, b'["ok",1]', "remote-call result received")
            update.revision = revision
            return Commit("L", "l", now, update=update, writes={"ledger": b"1"})

        handler_update = completed(after_delivery(row, delivered(row, now, b"", "")), now)
        # Submitted back to back, so one batch: a stale delivery takes the handler with it.
        stale = committer.submit(delivery(row.revision + 5), None)
        behind = committer.submit(
            Commit("T", "t", now, update=handler_update, writes={"paid": b"1"}), None, after=stale
        )
        for future in (stale, behind):
            with pytest.raises(CommitError):
                await future
        # Behind one that already failed: refused without reaching the store.
        late = committer.submit(Commit("T", "t", now, writes={"paid": b"2"}), None, after=stale)
        with pytest.raises(CommitError, match="rests on"):
            await late
        assert (await state_of(store, "T", "t"), await state_of(store, "L", "l")) == ({}, {})
        # A delivery that commits lets the handler behind it commit, in the same batch.
        ok = committer.submit(delivery(row.revision), None)
        behind = committer.submit(
            Commit("T", "t", now, update=handler_update, writes={"paid": b"1"}), None, after=ok
        )
        await asyncio.gather(ok, behind)
        assert await state_of(store, "T", "t") == {"paid": b"1"}
        done = await store.get("c1")
        assert done is not None
        assert (done.status, done.revision) == ("completed", 2)
        await committer.close()
    finally:
        await store.close()
