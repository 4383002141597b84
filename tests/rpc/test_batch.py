"""Planning a batch: numbering, hoisting shared chains, reply flags and encoding failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from operation_chain import ChainValidationError, OperationProxy, UnsupportedTypeError, chain_of
from rpc._batch import PendingCall, chain_form, plan_batch


def pending(*proxies: OperationProxy) -> list[PendingCall]:
    loop = asyncio.new_event_loop()
    try:
        return [PendingCall(chain_of(p), loop.create_future()) for p in proxies]
    finally:
        loop.close()


def sent(calls: list[PendingCall]) -> list[tuple[int, str, bool]]:
    """(wire id, first op name or call, reply) for each wire call of the plan."""
    plan = plan_batch(calls)
    out = []
    for call in plan.payload["calls"]:
        ops = call["chain"]["ops"]
        out.append((call["id"], ops[0]["name"], call.get("reply", True)))
    return out


def test_independent_calls_are_numbered_in_order() -> None:
    p = OperationProxy()
    calls = pending(p.a(), p.b(), p.c())
    plan = plan_batch(calls)
    assert plan.payload["v"] == 1
    assert sent(calls) == [(0, "a", True), (1, "b", True), (2, "c", True)]
    assert plan.waiting == {0: [calls[0]], 1: [calls[1]], 2: [calls[2]]}
    assert plan.needs == {0: set(), 1: set(), 2: set()}


def test_a_chain_shared_by_two_calls_is_hoisted_before_them_without_reply() -> None:
    p = OperationProxy()
    x = p.x()
    calls = pending(p.a(x), p.b(x))
    assert sent(calls) == [(0, "x", False), (1, "a", True), (2, "b", True)]
    plan = plan_batch(calls)
    assert plan.needs == {0: set(), 1: {0}, 2: {0}}
    assert plan.dependents({0}) == {0, 1, 2}
    assert plan.dependents({1}) == {1}


def test_an_awaited_chain_used_by_an_earlier_call_is_sent_first_with_reply() -> None:
    p = OperationProxy()
    x = p.x()
    assert sent(pending(p.a(x), x)) == [(0, "x", True), (1, "a", True)]


def test_hoisting_follows_dependencies_through_unshared_nested_chains() -> None:
    p = OperationProxy()
    shared = p.s()
    calls = pending(p.a(p.wrap(shared)), p.b(shared))
    assert sent(calls) == [(0, "s", False), (1, "a", True), (2, "b", True)]
    ops = plan_batch(calls).payload["calls"][1]["chain"]["ops"]
    wrapped = ops[1]["args"][0]["$chain"]
    assert wrapped[1]["args"] == [{"$obj": ["rpc.ref", {"call": 0}]}]


def test_chained_hoists_are_ordered_by_dependency() -> None:
    p = OperationProxy()
    base = p.base()
    mid = p.mid(base)
    calls = pending(p.a(mid), p.b(mid), p.c(base))
    assert sent(calls) == [
        (0, "base", False),
        (1, "mid", False),
        (2, "a", True),
        (3, "b", True),
        (4, "c", True),
    ]
    assert plan_batch(calls).needs[1] == {0}


def test_an_unencodable_call_fails_with_everything_that_needs_it() -> None:
    p = OperationProxy()
    bad = p.bad(object())
    calls = pending(p.a(bad), p.b(bad), p.ok())
    plan = plan_batch(calls)
    assert [(c.chain, type(e)) for c, e in plan.failed] == [
        (calls[0].chain, UnsupportedTypeError),
        (calls[1].chain, UnsupportedTypeError),
    ]
    assert sent([calls[2]]) == [(0, "ok", True)]
    assert list(plan.waiting) == [0]


def test_chain_form_is_the_versioned_json_form() -> None:
    p = OperationProxy()
    assert chain_form(chain_of(p.a(1))) == {
        "v": 1,
        "ops": [{"op": "get", "name": "a"}, {"op": "call", "args": [1], "kwargs": {}}],
    }


def test_chain_form_refuses_a_chain_that_contains_itself() -> None:
    p = OperationProxy()
    holder: list[Any] = []
    chain = chain_of(p.f(holder))
    holder.append(chain)
    with pytest.raises(ChainValidationError, match="contains itself"):
        chain_form(chain)
