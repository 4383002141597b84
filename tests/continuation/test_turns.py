"""Actors and turns: activation, storage, atomicity, ordering, eviction, calls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from continuation import (
    Actor,
    ActorRef,
    ActorSystem,
    CommitError,
    ManualClock,
    OutsideTurnError,
    SystemClosedError,
    UnknownActorError,
)
from operation_chain import ChainSecurityError, ExecutionPolicy, chain_of, expose

from .conftest import OpenSystem, hook_commits

ACTIVATIONS: list[str] = []


class Counter(Actor):
    def __init__(self) -> None:
        super().__init__()
        ACTIVATIONS.append(self.instance)
        self.seen = 0

    def increment(self, by: int = 1) -> int:
        self.seen += 1
        value = self.storage.get("n", 0) + by
        self.storage.put("n", value)
        return value

    def fail_after_write(self) -> None:
        self.storage.put("n", -1)
        self.storage.put("other", "x")
        self.seen = 1000
        raise RuntimeError("nope")

    def value(self) -> int:
        return int(self.storage.get("n", 0))

    def seen_count(self) -> int:
        return self.seen

    def items(self, prefix: str = "") -> dict[str, Any]:
        return self.storage.list(prefix)

    def fill(self, **values: Any) -> None:
        for key, value in values.items():
            self.storage.put(key, value)

    def remove(self, key: str) -> bool:
        return self.storage.delete(key)

    def mutate_read(self) -> list[int]:
        items = self.storage.get("list", [])
        items.append(1)
        return list(self.storage.get("list", []))

    def whoami(self) -> Any:
        return self.principal

    async def slow_append(self, entry: str, gate: asyncio.Event) -> list[str]:
        log = self.storage.get("log", [])
        await gate.wait()
        log.append(entry)
        self.storage.put("log", log)
        return list(log)

    def rooms(self) -> Rooms:
        return Rooms()


class Rooms:
    def get(self, name: str) -> Room:
        return Room(name)


class Room:
    def __init__(self, name: str) -> None:
        self.name = name

    def post(self, text: str) -> str:
        return f"{self.name}: {text}"


@pytest.fixture(autouse=True)
def _clear_activations() -> None:
    ACTIVATIONS.clear()


async def test_call_runs_a_turn_and_returns_once_durable(
    open_system: OpenSystem, db_path: str
) -> None:
    async with open_system(Counter) as system:
        counter = system.get(Counter, "a")
        assert await counter.increment(2) == 2
        assert await counter.increment() == 3
    async with open_system(Counter) as reopened:
        assert await reopened.get(Counter, "a").value() == 3


async def test_a_chain_of_calls_runs_in_one_turn(open_system: OpenSystem) -> None:
    async with open_system(Counter) as system:
        assert await system.get(Counter, "a").rooms().get("x").post("hi") == "x: hi"
        assert await system.get("Counter", "a").storage.get("n", 7) == 7


async def test_instances_are_separate(open_system: OpenSystem) -> None:
    async with open_system(Counter) as system:
        await system.get(Counter, "a").increment(5)
        assert await system.get(Counter, "b").value() == 0


async def test_a_turn_that_raises_leaves_no_trace(open_system: OpenSystem) -> None:
    async with open_system(Counter) as system:
        counter = system.get(Counter, "a")
        await counter.increment(4)
        with pytest.raises(RuntimeError, match="nope"):
            await counter.fail_after_write()
        assert await counter.value() == 4
        assert await counter.items() == {"n": 4}
        # The actor object was replaced, so attributes set by the failed turn are gone too.
        assert await counter.seen_count() == 0
        assert ACTIVATIONS == ["a", "a"]


async def test_storage_get_returns_a_copy(open_system: OpenSystem) -> None:
    async with open_system(Counter) as system:
        counter = system.get(Counter, "a")
        await counter.fill(list=[0])
        assert await counter.mutate_read() == [0]


async def test_storage_list_and_delete(open_system: OpenSystem) -> None:
    async with open_system(Counter) as system:
        counter = system.get(Counter, "a")
        await counter.fill(**{"user:2": "b", "user:1": "a", "room:1": "r"})
        assert await counter.items("user:") == {"user:1": "a", "user:2": "b"}
        assert list(await counter.items()) == ["room:1", "user:1", "user:2"]
        assert await counter.remove("user:1") is True
        assert await counter.remove("user:1") is False
        assert await counter.items("user:") == {"user:2": "b"}


async def test_storage_keeps_values_the_safe_codec_cannot(open_system: OpenSystem) -> None:
    async with open_system(Counter) as system:
        await system.get(Counter, "a").fill(value=complex(1, 2))
    async with open_system(Counter) as reopened:
        assert await reopened.get(Counter, "a").items() == {"value": complex(1, 2)}


async def test_turns_of_one_actor_never_overlap(open_system: OpenSystem) -> None:
    async with open_system(Counter) as system:
        counter = system.get(Counter, "a")
        gate = asyncio.Event()
        first = asyncio.ensure_future(counter.slow_append("first", gate))
        second = asyncio.ensure_future(counter.slow_append("second", gate))
        other = await system.get(Counter, "b").increment()  # another actor is not blocked
        assert other == 1
        gate.set()
        assert await first == ["first"]
        assert await second == ["first", "second"]


async def test_idle_actors_are_evicted_and_come_back(
    open_system: OpenSystem, clock: ManualClock
) -> None:
    async with open_system(Counter, idle_timeout=60) as system:
        await system.get(Counter, "a").increment()
        await system.advance(30)
        await system.get(Counter, "a").increment()
        assert ACTIVATIONS == ["a"]
        await system.advance(61)
        assert await system.get(Counter, "a").value() == 2
        assert ACTIVATIONS == ["a", "a"]


async def test_principal_is_visible_during_the_call_only(open_system: OpenSystem) -> None:
    async with open_system(Counter) as system:
        chain = chain_of(system.get(Counter, "a").whoami())
        assert await system.call("Counter", "a", chain, principal={"user": "ada"}) == {
            "user": "ada"
        }
        assert await system.get(Counter, "a").whoami() is None


async def test_calls_are_checked_by_the_policy(open_system: OpenSystem) -> None:
    class Strict(Actor):
        @expose
        def allowed(self) -> str:
            return "ok"

        def hidden(self) -> str:
            return "no"

    async with open_system(Strict, policy=ExecutionPolicy(strict=True)) as system:
        assert await system.get(Strict, "s").allowed() == "ok"
        with pytest.raises(ChainSecurityError):
            await system.get(Strict, "s").hidden()
        with pytest.raises(ChainSecurityError):
            await system.get(Strict, "s")._actor_slot


async def test_storage_writes_outside_a_turn_are_refused(open_system: OpenSystem) -> None:
    captured: list[Actor] = []

    class Leaky(Actor):
        def leak(self) -> None:
            captured.append(self)

    async with open_system(Leaky) as system:
        await system.get(Leaky, "x").leak()
        with pytest.raises(OutsideTurnError):
            captured[0].storage.put("k", 1)
        with pytest.raises(OutsideTurnError):
            captured[0].continue_(None)
        assert captured[0].storage.get("k") is None


async def test_actors_are_created_by_the_system_only() -> None:
    with pytest.raises(TypeError, match="created by its ActorSystem"):
        Counter()


async def test_refs_render_and_refuse_being_awaited_bare(open_system: OpenSystem) -> None:
    async with open_system(Counter) as system:
        ref = system.get(Counter, "a")
        assert isinstance(ref, ActorRef)
        assert repr(ref) == "ActorRef(Counter/a)"
        assert repr(ref.increment(2)) == "ActorRef(Counter/a: increment(2))"
        with pytest.raises(TypeError, match="not the ref itself"):
            await ref


async def test_unknown_actors_and_closed_systems_are_refused(open_system: OpenSystem) -> None:
    class Other(Actor):
        pass

    system = open_system(Counter)
    with pytest.raises(SystemClosedError, match="not running"):
        await system.get(Counter, "a").increment()
    async with system:
        with pytest.raises(UnknownActorError):
            system.get(Other, "a")
        with pytest.raises(UnknownActorError):
            system.get("Nope", "a")
        assert system.has_binding("Counter")
        assert not system.has_binding("Other")
    with pytest.raises(SystemClosedError, match="closed"):
        await system.get(Counter, "a").increment()
    with pytest.raises(SystemClosedError):
        await system.start()


async def test_a_failed_commit_fails_the_turn_and_reloads_the_actor(
    open_system: OpenSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_system(Counter) as system:
        counter = system.get(Counter, "a")
        await counter.increment(1)

        def failing_once(commits: Any, n: int) -> None:
            if n == 1:
                raise OSError("disk full")

        hook_commits(monkeypatch, system, failing_once)
        with pytest.raises(CommitError, match="disk full"):
            await counter.increment(10)
        assert await counter.value() == 1  # reloaded from disk: the lost write is gone
        assert await counter.increment(1) == 2


async def test_turns_queued_behind_a_lost_commit_are_refused(
    open_system: OpenSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_system(Counter) as system:
        counter = system.get(Counter, "a")
        await counter.increment(1)

        def failing_for_ten(commits: Any, n: int) -> None:
            if any(c.writes.get("n") == system._runtime.codec.dumps(11) for c in commits):
                raise OSError("bad sector")

        hook_commits(monkeypatch, system, failing_for_ten)
        results = await asyncio.gather(
            counter.increment(10), counter.increment(5), return_exceptions=True
        )
        assert all(isinstance(r, CommitError) for r in results)
        assert "never became durable" in str(results[1])
        assert await counter.value() == 1


async def test_durability_normal_commits_too(open_system: OpenSystem) -> None:
    async with open_system(Counter, durability="normal") as system:
        assert await system.get(Counter, "a").increment(3) == 3
    async with open_system(Counter) as reopened:
        assert await reopened.get(Counter, "a").value() == 3


async def test_in_memory_database(clock: ManualClock) -> None:
    async with ActorSystem(":memory:", actors=[Counter], clock=clock) as system:
        assert await system.get(Counter, "a").increment(3) == 3
        assert "SQLiteStore(':memory:'" in repr(system)
