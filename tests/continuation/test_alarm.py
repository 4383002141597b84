"""The alarm strategy: delay, at, cron, keys, ordering, and what the handler receives."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from continuation import (
    Actor,
    ActorSystem,
    AlarmInfo,
    Continuation,
    ContinuationStatus,
    ManualClock,
)

from .conftest import START, OpenSystem


class Alarms(Actor):
    def schedule(self, label: str, **options: Any) -> str:
        c = Continuation(self)
        return self.continue_(c.fired(label, c.result), strategy="alarm", **options)

    def schedule_many(self, labels: list[str], delay: float) -> list[str]:
        return [self.schedule(label, delay=delay) for label in labels]

    def fired(self, label: str, info: AlarmInfo) -> None:
        log = self.storage.get("log", [])
        log.append((label, info))
        self.storage.put("log", log)

    def chain_next(self, label: str, info: AlarmInfo) -> None:
        self.fired(label, info)
        if label != "third":
            c = Continuation(self)
            nxt = {"first": "second", "second": "third"}[label]
            self.continue_(c.chain_next(nxt, c.result), delay=0)

    def start_chain(self) -> None:
        c = Continuation(self)
        self.continue_(c.chain_next("first", c.result), delay=0)

    def log(self) -> list[tuple[str, AlarmInfo]]:
        return list(self.storage.get("log", []))

    def labels(self) -> list[str]:
        return [label for label, _ in self.storage.get("log", [])]


async def test_delay_fires_when_due_with_alarm_info(
    open_system: OpenSystem, clock: ManualClock
) -> None:
    async with open_system(Alarms) as system:
        alarms = system.get(Alarms, "a")
        cid = await alarms.schedule("x", delay=60)
        await system.advance(59.5)
        assert await alarms.log() == []
        await system.advance(0.5)
        [(label, info)] = await alarms.log()
        assert label == "x"
        assert info == AlarmInfo(
            cid, START + timedelta(seconds=60), START + timedelta(seconds=60), 1
        )
        assert (await system.continuation(cid)).status == ContinuationStatus.COMPLETED


@pytest.mark.parametrize("delay", [0, -5, timedelta(0)])
async def test_zero_or_negative_delay_fires_right_after_commit(
    open_system: OpenSystem, delay: Any
) -> None:
    async with open_system(Alarms) as system:
        alarms = system.get(Alarms, "a")
        await alarms.schedule("now", delay=delay)
        await system.drain()
        assert await alarms.labels() == ["now"]


async def test_at_fires_at_an_aware_datetime(open_system: OpenSystem) -> None:
    async with open_system(Alarms) as system:
        alarms = system.get(Alarms, "a")
        when = (START + timedelta(hours=1)).astimezone(timezone_plus_two())
        await alarms.schedule("at", at=when)
        await system.advance(3599)
        assert await alarms.labels() == []
        await system.advance(1)
        [(_, info)] = await alarms.log()
        assert info.scheduled_at == START + timedelta(hours=1)


def timezone_plus_two() -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=2))


async def test_overdue_continuations_fire_in_due_time_order(open_system: OpenSystem) -> None:
    async with open_system(Alarms) as system:
        alarms = system.get(Alarms, "a")
        for label, delay in [("c", 30), ("a", 10), ("b", 20)]:
            await alarms.schedule(label, delay=delay)
        await system.get(Alarms, "other").schedule("b2", delay=20)
        await system.advance(100)
        assert await alarms.labels() == ["a", "b", "c"]
        times = [info.fired_at for _, info in await alarms.log()]
        assert times == [START + timedelta(seconds=s) for s in (10, 20, 30)]


async def test_overdue_continuations_fire_in_order_after_a_restart(
    open_system: OpenSystem, clock: ManualClock
) -> None:
    async with open_system(Alarms) as system:
        await system.get(Alarms, "a").schedule_many(["1", "2"], 5)
        await system.get(Alarms, "a").schedule("0", delay=1)
    clock.set(clock.now() + 3600)
    async with open_system(Alarms) as reopened:
        await reopened.drain()
        log = await reopened.get(Alarms, "a").log()
        assert [label for label, _ in log] == ["0", "1", "2"]
        assert all(info.fired_at == START + timedelta(hours=1) for _, info in log)


async def test_handlers_may_schedule_more_and_advance_runs_them(open_system: OpenSystem) -> None:
    async with open_system(Alarms) as system:
        alarms = system.get(Alarms, "a")
        await alarms.start_chain()
        await system.advance(0)
        assert await alarms.labels() == ["first", "second", "third"]


async def test_cron_recurs_and_reschedules_in_the_firing_transaction(
    open_system: OpenSystem,
) -> None:
    async with open_system(Alarms) as system:
        alarms = system.get(Alarms, "a")
        cid = await alarms.schedule("tick", cron="*/10 * * * *")
        await system.advance(35 * 60)
        fired = [info.scheduled_at for _, info in await alarms.log()]
        assert fired == [START + timedelta(minutes=m) for m in (10, 20, 30)]
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.PENDING
        assert info.due_at == START + timedelta(minutes=40)
        assert [e.event for e in info.audit] == ["scheduled", "fired", "fired", "fired"]


async def test_cron_reads_its_expression_in_a_time_zone(open_system: OpenSystem) -> None:
    async with open_system(Alarms) as system:
        alarms = system.get(Alarms, "a")
        await alarms.schedule("nine", cron="0 9 * * *", timezone="Europe/Paris")
        await system.advance(24 * 3600)
        [(_, info)] = await alarms.log()
        assert info.scheduled_at == datetime(2026, 1, 2, 8, 0, tzinfo=UTC)  # 09:00 CET


async def test_cron_after_downtime_fires_once_then_resumes_the_schedule(
    open_system: OpenSystem, clock: ManualClock
) -> None:
    async with open_system(Alarms) as system:
        cid = await system.get(Alarms, "a").schedule("tick", cron="0 * * * *")
    clock.set(clock.now() + 5 * 3600 + 60)
    async with open_system(Alarms) as reopened:
        await reopened.drain()
        assert await reopened.get(Alarms, "a").labels() == ["tick"]
        info = await reopened.continuation(cid)
        assert info.due_at == START + timedelta(hours=6)


async def test_a_key_returns_the_existing_pending_continuation(open_system: OpenSystem) -> None:
    async with open_system(Alarms) as system:
        alarms = system.get(Alarms, "a")
        first = await alarms.schedule("x", delay=10, key="daily")
        assert await alarms.schedule("y", delay=99, key="daily") == first
        assert await system.get(Alarms, "b").schedule("z", delay=10, key="daily") != first
        await system.advance(10)
        assert await alarms.labels() == ["x"]
        # Once it finished, the key is free again.
        again = await alarms.schedule("w", delay=10, key="daily")
        assert again != first


async def test_a_key_is_deduplicated_within_one_turn(open_system: OpenSystem) -> None:
    class Twice(Actor):
        def twice(self) -> list[str]:
            c = Continuation(self)
            return [self.continue_(c.noop(c.result), delay=5, key="k") for _ in range(2)]

        def noop(self, info: AlarmInfo) -> None:
            pass

    async with open_system(Twice) as system:
        first, second = await system.get(Twice, "t").twice()
        assert first == second
        assert len(await system.continuations(status="pending")) == 1


async def test_keys_survive_a_restart(open_system: OpenSystem) -> None:
    async with open_system(Alarms) as system:
        first = await system.get(Alarms, "a").schedule("x", delay=10, key="once")
    async with open_system(Alarms) as reopened:
        assert await reopened.get(Alarms, "a").schedule("y", delay=10, key="once") == first


async def test_the_real_clock_fires_by_itself(db_path: str) -> None:
    fired = asyncio.Event()

    class Ping(Actor):
        def ping(self) -> None:
            c = Continuation(self)
            self.continue_(c.pong(c.result), delay=0)

        def pong(self, info: AlarmInfo) -> None:
            asyncio.get_running_loop().call_soon(fired.set)

    async with ActorSystem(db_path, actors=[Ping]) as system:
        await system.get(Ping, "p").ping()
        await asyncio.wait_for(fired.wait(), timeout=10)
