"""Retries, dead letters, cancellation, versioning, inspection and retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

import pytest

from continuation import (
    Actor,
    AlarmInfo,
    Continuation,
    ContinuationCancelled,
    ContinuationNotFoundError,
    ContinuationStateError,
    ContinuationStatus,
    ManualClock,
    RetryPolicy,
)

from .conftest import START, OpenSystem

NO_JITTER = RetryPolicy(max_attempts=3, base_delay=10, max_delay=15, jitter=0)


class Flaky(Actor):
    def schedule(self, failures: int, *, with_error_chain: bool = False, **options: Any) -> str:
        c = Continuation(self)
        self.storage.put("failures", failures)
        error_chain = c.on_error(c.error) if with_error_chain else None
        return self.continue_(c.handle(c.result), error_chain, delay=5, **options)

    def handle(self, info: AlarmInfo) -> None:
        self.storage.put("attempts", [*self.storage.get("attempts", []), info.attempt])
        left = self.storage.get("failures", 0)
        if left:
            # This write is lost with the failing turn, so the count comes from the turn count.
            self.storage.put("failures", left)
            raise ValueError(f"failing, {left} to go")
        self.storage.put("done", True)

    def on_error(self, error: Exception) -> None:
        self.storage.put("errors", [*self.storage.get("errors", []), repr(error)])

    def cancel_own(self, cid: str) -> None:
        self.cancel_continuation(cid)

    def state(self) -> dict[str, Any]:
        return self.storage.list()


class Countdown(Flaky):
    """Fails until its counter reaches zero; the counter lives outside the turn's writes."""

    remaining: ClassVar[dict[str, int]] = {}

    def handle(self, info: AlarmInfo) -> None:
        self.storage.put("attempts", [*self.storage.get("attempts", []), info.attempt])
        if Countdown.remaining.get(self.instance, 0) > 0:
            Countdown.remaining[self.instance] -= 1
            raise ValueError("not yet")
        self.storage.put("done", True)


async def test_a_failing_handler_is_retried_with_backoff_then_succeeds(
    open_system: OpenSystem,
) -> None:
    Countdown.remaining["a"] = 2
    async with open_system(Countdown, retry=NO_JITTER) as system:
        cid = await system.get(Countdown, "a").schedule(0)
        await system.advance(5)
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.PENDING
        assert info.attempts == 1
        assert info.due_at == START + timedelta(seconds=15)
        assert info.last_error == "ValueError: not yet"
        assert "raise ValueError" in (info.last_traceback or "")
        await system.advance(10)
        assert (await system.continuation(cid)).due_at == START + timedelta(seconds=30)  # capped
        await system.advance(15)
        state = await system.get(Countdown, "a").state()
        assert state["attempts"] == [3]  # failed turns left no writes
        assert state["done"] is True
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.COMPLETED
        events = [e.event for e in info.audit]
        assert events == ["scheduled", "attempt failed", "attempt failed", "completed"]


async def test_retries_used_up_make_it_dead_and_retry_requeues(open_system: OpenSystem) -> None:
    Countdown.remaining["b"] = 5
    async with open_system(Countdown) as system:
        cid = await system.get(Countdown, "b").schedule(
            0, retry=RetryPolicy(max_attempts=2, base_delay=1, jitter=0)
        )
        await system.advance(100)
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.DEAD
        assert info.attempts == 2
        assert info.due_at is None
        assert info.finished_at == START + timedelta(seconds=6)
        assert [e.event for e in info.audit][-1] == "dead"
        assert [i.id for i in await system.continuations(status="dead")] == [cid]

        Countdown.remaining["b"] = 0
        await system.retry(cid)
        assert (await system.continuation(cid)).status == ContinuationStatus.PENDING
        await system.drain()
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.COMPLETED
        assert "retried" in [e.event for e in info.audit]
        with pytest.raises(ContinuationStateError, match="completed"):
            await system.retry(cid)


async def test_retry_count_shorthand(open_system: OpenSystem) -> None:
    Countdown.remaining["c"] = 5
    async with open_system(Countdown) as system:
        cid = await system.get(Countdown, "c").schedule(0, retry=1)
        await system.advance(5)
        assert (await system.continuation(cid)).status == ContinuationStatus.DEAD


async def test_retry_delays_are_capped_exponential_with_jitter() -> None:
    policy = RetryPolicy(base_delay=2, max_delay=10, jitter=0.5)
    import random

    rng = random.Random(7)
    for attempt, cap in [(1, 2), (2, 4), (3, 8), (4, 10), (40, 10)]:
        delays = [policy.delay(attempt, rng) for _ in range(50)]
        assert all(cap * 0.5 <= d <= cap for d in delays)
        assert len(set(delays)) > 1


async def test_system_cancel_without_error_chain(open_system: OpenSystem) -> None:
    async with open_system(Flaky) as system:
        cid = await system.get(Flaky, "a").schedule(0)
        await system.cancel(cid)
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.CANCELLED
        await system.advance(10)
        assert "done" not in await system.get(Flaky, "a").state()
        with pytest.raises(ContinuationStateError, match="cancelled"):
            await system.cancel(cid)


async def test_system_cancel_delivers_cancellation_to_the_error_chain(
    open_system: OpenSystem,
) -> None:
    async with open_system(Flaky) as system:
        flaky = system.get(Flaky, "a")
        cid = await flaky.schedule(0, with_error_chain=True)
        await system.cancel(cid)
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.PENDING
        assert info.cancel_requested
        with pytest.raises(ContinuationStateError, match="already cancelled"):
            await system.cancel(cid)
        await system.drain()
        state = await flaky.state()
        assert state["errors"] == [repr(ContinuationCancelled(cid))]
        assert "done" not in state
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.CANCELLED
        assert [e.event for e in info.audit] == ["scheduled", "cancel requested", "cancelled"]


async def test_cancel_from_inside_a_turn(open_system: OpenSystem) -> None:
    async with open_system(Flaky) as system:
        flaky = system.get(Flaky, "a")
        plain = await flaky.schedule(0)
        with_chain = await flaky.schedule(0, with_error_chain=True)
        other = await system.get(Flaky, "b").schedule(0)
        await flaky.cancel_own(plain)
        await flaky.cancel_own(with_chain)
        await flaky.cancel_own(other)  # not this actor's: ignored
        await system.advance(10)
        assert (await system.continuation(plain)).status == ContinuationStatus.CANCELLED
        assert (await system.continuation(with_chain)).status == ContinuationStatus.CANCELLED
        assert (await system.continuation(other)).status == ContinuationStatus.COMPLETED
        assert len((await flaky.state())["errors"]) == 1


async def test_cancelling_frees_the_key(open_system: OpenSystem) -> None:
    async with open_system(Flaky) as system:
        flaky = system.get(Flaky, "a")
        first = await flaky.schedule(0, key="k")
        await system.cancel(first)
        assert await flaky.schedule(0, key="k") != first


async def test_a_version_mismatch_halts_visibly(open_system: OpenSystem) -> None:
    class Versioned(Actor):
        version = "1"

        def schedule(self) -> str:
            c = Continuation(self)
            return self.continue_(c.handle(c.result), delay=1)

        def handle(self, info: AlarmInfo) -> None:
            self.storage.put("ran", self.version)

        def ran(self) -> Any:
            return self.storage.get("ran")

    async with open_system(Versioned) as system:
        cid = await system.get(Versioned, "v").schedule()
        compatible = await system.get(Versioned, "w").schedule()

    Versioned.version = "2"
    async with open_system(Versioned) as system:
        await system.advance(5)
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.VERSION_MISMATCH
        assert "version '1'" in (info.last_error or "")
        assert await system.get(Versioned, "v").ran() is None
        mismatched = await system.continuations(status="version_mismatch")
        assert {i.id for i in mismatched} == {cid, compatible}

    Versioned.compatible_versions = frozenset({"1"})
    async with open_system(Versioned) as system:
        await system.retry(cid)
        await system.drain()
        assert await system.get(Versioned, "v").ran() == "2"


async def test_a_continuation_of_an_unregistered_actor_halts(open_system: OpenSystem) -> None:
    async with open_system(Flaky) as system:
        cid = await system.get(Flaky, "a").schedule(0)

    class Unrelated(Actor):
        pass

    async with open_system(Unrelated) as system:
        await system.advance(10)
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.VERSION_MISMATCH
        assert "no actor class is registered for binding 'Flaky'" in (info.last_error or "")
        await system.retry(cid)  # requeued; it will halt again until Flaky is deployed
        assert (await system.continuation(cid)).status == ContinuationStatus.PENDING


async def test_inspection_filters(open_system: OpenSystem) -> None:
    async with open_system(Flaky) as system:
        a1 = await system.get(Flaky, "a").schedule(0)
        a2 = await system.get(Flaky, "a").schedule(0, key="x")
        b1 = await system.get(Flaky, "b").schedule(0)
        await system.cancel(a1)
        assert {i.id for i in await system.continuations()} == {a1, a2, b1}
        assert [i.id for i in await system.continuations(instance="a", status="pending")] == [a2]
        assert [i.id for i in await system.continuations(binding="Flaky", instance="b")] == [b1]
        both = await system.continuations(status=[ContinuationStatus.CANCELLED, "pending"], limit=2)
        assert len(both) == 2
        info = await system.continuation(a2)
        assert info.chain == "handle(<result>)"
        assert info.key == "x"
        assert info.strategy == "alarm"
        assert info.version == "1"
        with pytest.raises(ContinuationNotFoundError):
            await system.continuation("nope")


async def test_completed_rows_are_purged_after_the_retention(
    open_system: OpenSystem, clock: ManualClock
) -> None:
    async with open_system(Flaky, retention=timedelta(hours=1)) as system:
        done = await system.get(Flaky, "a").schedule(0)
        cancelled = await system.get(Flaky, "a").schedule(0)
        await system.cancel(cancelled)
        await system.advance(5)
        pending = await system.get(Flaky, "b").schedule(0)
        assert await system.purge() == 0
        clock.set(clock.now() + 3600)
        assert await system.purge() == 1  # the cancelled one, finished 5 s before the other
        clock.set(clock.now() + 5)
        assert await system.purge() == 1
        remaining = {i.id for i in await system.continuations()}
        assert remaining == {pending}
        with pytest.raises(ContinuationNotFoundError):
            await system.continuation(done)


class Garbled(Flaky):
    def handle(self, info: AlarmInfo) -> None:
        raise ValueError("byte \x00 in the message")


async def test_an_error_whose_message_holds_a_nul_character_is_recorded(
    open_system: OpenSystem,
) -> None:
    # PostgreSQL text cannot hold U+0000: the store must still record the failure (escaped),
    # not fail the firing's commit and fire it again forever.
    async with open_system(Garbled, retry=RetryPolicy(max_attempts=1, jitter=0)) as system:
        cid = await system.get(Garbled, "a").schedule(0)
        await system.advance(5)
        info = await system.continuation(cid)
        assert (info.status, info.attempts) == (ContinuationStatus.DEAD, 1)
        assert info.last_error is not None
        assert info.last_error.replace("\x00", "\\x00") == "ValueError: byte \\x00 in the message"
        assert "attempt 1: ValueError: byte" in str([event.detail for event in info.audit])
