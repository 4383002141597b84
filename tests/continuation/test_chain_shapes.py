"""``continue_`` checks a flat chain's shape once per system: a repeated shape skips the
checks, and every chain of another shape (or with no shape) is still checked in full."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest

from continuation import Actor, AlarmInfo, Continuation, ContinuationChainError, _scheduling
from continuation._continuation import chain_shape
from operation_chain import CallOp, ExecutionPolicy, GetOp, chain_of

from .conftest import OpenSystem


class Target(Actor):
    def record(self, number: int, *, label: str = "") -> int:
        return number


class Shapes(Actor):
    def done(self, label: str, info: AlarmInfo) -> None:
        self.storage.put(label, info.attempt)

    def pair(self, a: int, b: int = 0, *, flag: bool = False) -> None:
        pass

    def failed(self, label: str, error: Exception) -> None:
        pass

    def schedule(self, case: str) -> str:
        return str(SCHEDULE[case](self))


def handler(actor: Shapes, label: str = "x") -> Any:
    c = Continuation(actor)
    return c.done(label, c.result)


def nested(c: Continuation) -> Any:
    return c.pair(c.nope(), 1)


def remote(actor: Shapes, call: Any) -> str:
    c = Continuation(actor)
    return actor.continue_(
        c.done("call", c.result), strategy="remote-call", binding="Target", instance="t",
        call=call,
    )  # fmt: skip


def later(actor: Shapes, chain: Any) -> str:
    return actor.continue_(chain, delay=10)


C, RESULT, ERROR = Continuation, Continuation.result, Continuation.error

SCHEDULE: dict[str, Callable[[Shapes], object]] = {
    "good": lambda a: later(a, handler(a, "good")),
    "good, another value": lambda a: later(a, handler(a, "other")),
    "a list argument": lambda a: later(a, C(a).pair([1], RESULT)),
    "a good call": lambda a: remote(a, C(Target).record(1)),
    "a good call, another value": lambda a: remote(a, C(Target).record(2)),
    "c.error in the handler": lambda a: later(a, C(a).done("x", ERROR)),
    "one argument more": lambda a: later(a, C(a).pair(1, 2, 3)),
    "an unknown keyword": lambda a: later(a, C(a).pair(1, colour=True)),
    "a private name after the call": lambda a: later(a, handler(a)._hidden),
    "a nested chain": lambda a: later(a, nested(C(a))),
    "a call with an argument more": lambda a: remote(a, C(Target).record(1, 2)),
    "a call with an unknown keyword": lambda a: remote(a, C(Target).record(1, colour="red")),
    "a call that uses c.result": lambda a: remote(a, C(Target).record(RESULT)),
}


def counting_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The roles of the chains ``continue_`` checks in full, in order."""
    checked: list[str] = []
    original = _scheduling.check_handler_chain

    def check(cls: type, chain: Any, *, role: str, synchronous: bool = True) -> None:
        checked.append(role)
        original(cls, chain, role=role, synchronous=synchronous)

    monkeypatch.setattr(_scheduling, "check_handler_chain", check)
    return checked


async def test_a_repeated_shape_is_checked_once_and_others_each_time(
    open_system: OpenSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = counting_checks(monkeypatch)
    async with open_system(Shapes, Target) as system:
        ref = system.get(Shapes, "s")
        for case in ("good", "good, another value", "good"):
            await ref.schedule(case)
        assert checked == ["handler chain"]
        for case in ("a good call", "a good call, another value"):
            await ref.schedule(case)
        assert checked == ["handler chain", "call"]  # the handler's shape was known
        await ref.schedule("a list argument")
        await ref.schedule("a list argument")
        assert checked[2:] == ["handler chain", "handler chain"]  # no shape: checked in full
        assert len(await system.continuations(status="pending")) == 7


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("c.error in the handler", "c.result belongs in the handler chain"),
        ("one argument more", "too many positional arguments"),
        ("an unknown keyword", "unexpected keyword argument 'colour'"),
        ("a private name after the call", "_hidden"),
        ("a nested chain", "Shapes.nope is not a method"),
        ("a call with an argument more", "too many positional arguments"),
        ("a call with an unknown keyword", "unexpected keyword argument 'colour'"),
        ("a call that uses c.result", "the call .* is refused"),
    ],
)
async def test_a_chain_near_a_good_shape_is_still_refused(
    open_system: OpenSystem, case: str, match: str
) -> None:
    async with open_system(Shapes, Target) as system:
        ref = system.get(Shapes, "s")
        for good in ("good", "a good call"):
            await ref.schedule(good)
        for _ in range(2):  # refused each time: a refusal is never remembered
            with pytest.raises(ContinuationChainError, match=match):
                await ref.schedule(case)
        assert len(await system.continuations(status="pending")) == 2


async def test_each_system_checks_with_its_own_policy(open_system: OpenSystem) -> None:
    async with open_system(Shapes, Target) as loose:
        await loose.get(Shapes, "s").schedule("good")
    tight = ExecutionPolicy(max_arguments=1)  # the handler has two
    async with open_system(Shapes, Target, policy=tight) as system:
        with pytest.raises(ContinuationChainError, match="max_arguments"):
            await system.get(Shapes, "s").schedule("good")


def test_flat_chains_of_one_form_share_a_shape() -> None:
    c = Continuation(Shapes)
    shape = chain_shape(chain_of(c.done("a", c.result)).ops)
    assert shape is not None
    assert chain_shape(chain_of(c.done("something else", c.result)).ops) == shape
    assert chain_shape(chain_of(c.done(3.5, c.result)).ops) == shape  # values never count
    different = [
        c.done("a", c.error),  # another marker
        c.done(c.result, "a"),  # the marker elsewhere
        c.done("a", c.result, "b"),  # an argument more
        c.done("a", info=c.result),  # by keyword
        c.pair("a", c.result),  # another name
        c.done("a", c.result).attempt,  # an operation more
        c.done("a", c.result)["attempt"],
        c.done("a", c.result)[c.result],
    ]
    shapes = [chain_shape(chain_of(proxy).ops) for proxy in different]
    assert None not in shapes
    assert len({shape, *shapes}) == len(different) + 1


@pytest.mark.parametrize(
    "argument",
    [[1], (1,), {"a": 1}, 1j, AlarmInfo, object()],
    ids=["list", "tuple", "dict", "complex", "class", "object"],
)
def test_a_chain_with_other_arguments_has_no_shape(argument: object) -> None:
    c = Continuation(Shapes)
    assert chain_shape(chain_of(c.done(argument, c.result)).ops) is None
    assert chain_shape(chain_of(c.done("a", info=argument)).ops) is None
    assert chain_shape(chain_of(c.done("a", c.result)[argument]).ops) is None


def test_a_chain_with_a_nested_chain_has_no_shape() -> None:
    c = Continuation(Shapes)
    assert chain_shape(chain_of(c.done(c.pair(1), c.result)).ops) is None


@pytest.mark.parametrize(
    "op",
    [
        GetOp(5),  # type: ignore[arg-type]
        CallOp([1]),  # type: ignore[arg-type]
        CallOp((), MappingProxyType({"a": 1})),
        CallOp((), {5: 1}),
        "not an operation",
    ],
    ids=["a name that is not a str", "a list of arguments", "a mapping proxy", "an int keyword",
         "a str"],
)  # fmt: skip
def test_a_malformed_chain_has_no_shape(op: object) -> None:
    # The full checks refuse these, each with its own message.
    assert chain_shape((GetOp("done"), CallOp(("a", RESULT)), op)) is None
