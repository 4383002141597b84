"""Executing chains: order, nesting, aliasing, markers, refusals, awaitables and errors."""

from __future__ import annotations

import asyncio
import os
import types
from collections.abc import Generator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operation_chain._chain import CallOp, GetOp, ItemOp, OperationChain
from operation_chain._errors import (
    AwaitableResultError,
    ChainLimitError,
    ChainSecurityError,
    ChainValidationError,
    MarkerNotInjectedError,
)
from operation_chain._executor import execute_operation_chain, execute_operation_chain_async
from operation_chain._markers import ERROR, RESULT
from operation_chain._policy import DEFAULT_POLICY, ExecutionPolicy, expose
from operation_chain._proxy import OperationProxy, chain_of
from tests.operation_chain.chain_strategies import nested_chains


def build(*ops: Any) -> OperationChain:
    return OperationChain._build(tuple(ops))


class Made:
    instances = 0

    def __init__(self) -> None:
        Made.instances += 1


class Awaitable:
    """An awaitable that is not a coroutine: it cannot be closed, only refused."""

    def __await__(self) -> Generator[None, None, int]:
        yield None
        return 5


class Recorder:
    """A target that logs every method call, so a test can tell what ran and in what order."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.data = {"a": 1, "b": [10, 20]}
        self.made: list[Any] = []

    def echo(self, *args: Any, **kwargs: Any) -> Any:
        self.log.append("echo")
        return (args, kwargs) if kwargs else args

    def name(self, text: str = "n") -> str:
        self.log.append(f"name:{text}")
        return text

    def make_list(self) -> list[int]:
        self.log.append("make_list")
        made = [len(self.made)]
        self.made.append(made)
        return made

    def pair(self, first: Any, second: Any) -> tuple[Any, Any]:
        self.log.append("pair")
        return first, second

    def child(self) -> Recorder:
        self.log.append("child")
        return Recorder()

    def get_class(self) -> type:
        self.log.append("get_class")
        return Made

    def get_module(self) -> types.ModuleType:
        self.log.append("get_module")
        return os

    def fail(self, error: BaseException) -> None:
        self.log.append("fail")
        raise error

    async def later(self, value: Any = 1) -> Any:
        self.log.append("later-ran")
        return value

    async def later_child(self) -> Recorder:
        self.log.append("later_child-ran")
        return self

    @types.coroutine
    def old_style(self) -> Generator[None, None, int]:
        self.log.append("old_style-ran")
        yield None
        return 1

    def awaitable(self) -> Awaitable:
        self.log.append("awaitable")
        return Awaitable()

    @property
    def pending(self) -> Any:
        self.log.append("pending")
        return self.later(7)

    @expose
    def shown(self) -> list[int]:
        self.log.append("shown")
        return [1, 2]


def run(chain_or_proxy: Any, target: Any = None, **options: Any) -> Any:
    chain = (
        chain_or_proxy if isinstance(chain_or_proxy, OperationChain) else chain_of(chain_or_proxy)
    )
    return execute_operation_chain(Recorder() if target is None else target, chain, **options)


# -- basics -----------------------------------------------------------------------------------


def test_gets_calls_and_items_run_left_to_right() -> None:
    p = OperationProxy()
    target = Recorder()
    assert run(p.data["b"][1].bit_length(), target) == 5
    assert run(p.echo(1, k=2), target) == ((1,), {"k": 2})
    assert target.log == ["echo"]


def test_an_empty_chain_returns_the_target() -> None:
    target = Recorder()
    assert run(OperationProxy(), target) is target


def test_the_default_policy_is_used_when_none_is_given() -> None:
    p = OperationProxy()
    assert run(p.name("x"), policy=None) == run(p.name("x"), policy=DEFAULT_POLICY) == "x"


def test_only_chains_are_executed() -> None:
    with pytest.raises(TypeError, match=r"OperationChain, not OperationProxy.*chain_of"):
        execute_operation_chain(Recorder(), OperationProxy().name())  # type: ignore[arg-type]


def test_a_policy_must_be_an_execution_policy() -> None:
    with pytest.raises(TypeError, match="ExecutionPolicy, not dict"):
        run(OperationProxy().name(), policy={"strict": True})


# -- nested chains ----------------------------------------------------------------------------


def test_nested_chains_run_against_the_root_in_argument_order_depth_first() -> None:
    p = OperationProxy()
    target = Recorder()
    result = run(p.child().pair(p.name(p.name("inner")), second=p.name("kw")), target)
    assert result == ("inner", "kw")
    assert target.log == ["child", "name:inner", "name:inner", "name:kw"]


def test_nested_chains_inside_containers_and_item_keys_are_resolved() -> None:
    p = OperationProxy()
    result = run(p.echo([p.name("a")], (1, {"k": p.name("b")}), key={"x": [p.name("c")]}))
    assert result == ((["a"], (1, {"k": "b"})), {"key": {"x": ["c"]}})
    assert run(p.data[p.name("a")]) == 1


def test_nested_chain_shared_twice_runs_once() -> None:
    p = OperationProxy()
    target = Recorder()
    x = p.make_list()
    first, second = run(p.pair(x, x), target)
    assert first is second is target.made[0]
    assert target.log == ["make_list", "pair"]


def test_a_shared_chain_runs_once_across_nesting_levels_and_containers() -> None:
    p = OperationProxy()
    target = Recorder()
    x = p.make_list()
    first, (inner,) = run(p.pair([x], p.echo({"k": x})), target)
    assert first[0] is inner["k"] is target.made[0]
    assert target.log.count("make_list") == 1


def test_a_new_execution_runs_the_shared_chain_again() -> None:
    p = OperationProxy()
    target = Recorder()
    chain = chain_of(p.pair(p.make_list(), 0))
    first = execute_operation_chain(target, chain)[0]
    second = execute_operation_chain(target, chain)[0]
    assert first is not second
    assert target.log.count("make_list") == 2


def test_an_empty_nested_chain_stands_for_the_target() -> None:
    p = OperationProxy()
    target = Recorder()
    assert run(p.echo(p), target) == (target,)


# -- containers -------------------------------------------------------------------------------


def test_containers_with_nothing_to_resolve_pass_through_as_the_same_object() -> None:
    items, mapping, pair = [1, [2]], {"k": [3]}, (4, [5])
    args = run(build(GetOp("echo"), CallOp((items, mapping, pair))))
    assert args[0] is items
    assert args[1] is mapping
    assert args[2] is pair


def test_containers_with_something_to_resolve_are_rebuilt_with_the_same_type() -> None:
    untouched = [1, 2]
    items = [build(GetOp("name"), CallOp(("a",))), untouched]
    pair = (RESULT, untouched)
    mapping = {"k": RESULT, "u": untouched}
    args = run(build(GetOp("echo"), CallOp((items, pair, mapping))), inject={"result": "r"})
    assert args == (["a", [1, 2]], ("r", [1, 2]), {"k": "r", "u": [1, 2]})
    assert [type(a) for a in args] == [list, tuple, dict]
    assert args[0] is not items
    assert args[1] is not pair
    assert args[2] is not mapping
    assert args[0][1] is args[1][1] is args[2]["u"] is untouched


def test_a_container_shared_between_arguments_stays_shared() -> None:
    shared = [RESULT]
    first, second = run(build(GetOp("pair"), CallOp((shared, [shared]))), inject={"result": 1})
    assert first == [1]
    assert second[0] is first


def test_a_cyclic_container_is_rebuilt_with_its_cycle() -> None:
    cyclic: list[Any] = [RESULT]
    cyclic.append(cyclic)
    holder = (cyclic,)
    cyclic.append(holder)
    (result,) = run(build(GetOp("echo"), CallOp((cyclic,))), inject={"result": "r"})
    assert result[0] == "r"
    assert result[1] is result
    assert result[2][0] is result


def test_a_cyclic_container_without_anything_to_resolve_passes_through() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    (result,) = run(build(GetOp("echo"), CallOp(([cyclic, RESULT],))), inject={"result": 2})
    assert result[0] is cyclic
    assert result[1] == 2


def test_other_objects_inside_a_rebuilt_container_pass_through() -> None:
    frozen, obj = frozenset({RESULT}), Made.__new__(Made)
    ((first, second, third),) = run(
        build(GetOp("echo"), CallOp(([RESULT, frozen, obj],))), inject={"result": 1}
    )
    assert first == 1
    assert second is frozen
    assert third is obj


def test_dict_keys_sets_and_other_objects_are_not_searched() -> None:
    frozen = frozenset({RESULT})
    args = run(build(GetOp("echo"), CallOp(({RESULT: 1}, frozen))))
    assert args == ({RESULT: 1}, frozen)
    assert args[1] is frozen


# -- markers ----------------------------------------------------------------------------------


def test_markers_are_replaced_by_injected_values_deep_inside_containers() -> None:
    error = ValueError("boom")
    chain = build(
        GetOp("echo"),
        CallOp((RESULT, [{"e": (ERROR, [RESULT])}]), {"kw": {"r": RESULT}}),
    )
    result = run(chain, inject={"result": 42, "error": error})
    assert result == ((42, [{"e": (error, [42])}]), {"kw": {"r": 42}})
    assert result[0][1][0]["e"][0] is error


def test_a_marker_as_an_item_key_is_replaced() -> None:
    assert run(build(GetOp("data"), ItemOp(RESULT)), inject={"result": "a"}) == 1


def test_an_uninjected_marker_is_refused_before_anything_runs() -> None:
    target = Recorder()
    chain = build(GetOp("name"), CallOp(), GetOp("upper"), CallOp((RESULT,)))
    with pytest.raises(MarkerNotInjectedError, match=r"<result>.*inject=\{'result': \.\.\.\}"):
        run(chain, target, inject={"error": 1})
    with pytest.raises(MarkerNotInjectedError, match=r"<error>"):
        run(build(GetOp("echo"), CallOp(([ERROR],))), target)
    assert target.log == []


class _NoStaticCheck(ExecutionPolicy):
    def check(self, chain: OperationChain, target: object = None, **_: Any) -> None:
        pass


def test_an_uninjected_marker_is_still_refused_if_a_policy_skips_the_static_check() -> None:
    with pytest.raises(MarkerNotInjectedError, match="<error>"):
        run(build(GetOp("echo"), CallOp((ERROR,))), policy=_NoStaticCheck())


def test_an_unknown_inject_key_is_refused() -> None:
    target = Recorder()
    with pytest.raises(ChainValidationError, match=r"'results'.*'result' and 'error'"):
        run(OperationProxy().name(), target, inject={"results": 1})
    assert target.log == []


def test_inject_must_be_a_mapping() -> None:
    with pytest.raises(TypeError, match="mapping"):
        run(OperationProxy().name(), inject=[("result", 1)])


# -- refusals ---------------------------------------------------------------------------------


def _late_private_chains() -> list[OperationChain]:
    ok = (GetOp("name"), CallOp(), GetOp("upper"), CallOp())
    nested_bad = build(GetOp("name"), CallOp(), GetOp("_secret"))
    return [
        build(*ok, GetOp("_late")),
        build(*ok, GetOp("echo"), CallOp((build(GetOp("make_list"), CallOp()), nested_bad))),
        build(GetOp("echo"), CallOp(([{"k": nested_bad}],))),
        build(*ok, GetOp("echo"), CallOp((), {"_kw": 1})),
        build(GetOp("echo"), CallOp((1,) * 101)),
        build(
            *ok,
            GetOp("echo"),
            CallOp((build(GetOp("name"), CallOp()), build(GetOp("Made"), CallOp()))),
        ),
    ]


class RecorderWithClass(Recorder):
    Made = Made


@pytest.mark.parametrize(
    "chain", _late_private_chains(), ids=["late", "nested", "deep", "kw", "limit", "class-call"]
)
def test_a_refused_chain_runs_no_part_of_itself(chain: OperationChain) -> None:
    target, before = RecorderWithClass(), Made.instances
    with pytest.raises(ChainSecurityError):
        execute_operation_chain(target, chain)
    assert target.log == []
    assert Made.instances == before


def test_calling_a_class_on_the_target_is_refused_statically() -> None:
    target, before = RecorderWithClass(), Made.instances
    p = OperationProxy()
    with pytest.raises(ChainSecurityError, match="class 'Made'"):
        run(p.name().pair(1, p.Made()), target)
    assert target.log == []
    assert Made.instances == before


def test_calling_a_class_returned_mid_chain_is_refused_at_runtime() -> None:
    target, before = Recorder(), Made.instances
    with pytest.raises(ChainSecurityError, match="class 'Made'"):
        run(OperationProxy().get_class()(), target)
    assert target.log == ["get_class"]
    assert Made.instances == before


def test_a_module_returned_mid_chain_is_not_reachable() -> None:
    with pytest.raises(ChainSecurityError, match="module 'os'"):
        run(OperationProxy().get_module().getcwd())


def test_frames_are_not_reachable_through_a_returned_generator() -> None:
    class Numbers:
        def count(self) -> Generator[int, None, None]:
            yield 1

    escape = OperationProxy().count().gi_frame.f_builtins["eval"]("1 + 1")
    with pytest.raises(ChainSecurityError, match="'gi_frame' of a generator"):
        run(escape, Numbers())


def test_strict_mode_refuses_unexposed_members_of_returned_objects() -> None:
    strict = ExecutionPolicy(strict=True)
    assert run(OperationProxy().shown()[0], policy=strict) == 1
    target = Recorder()
    with pytest.raises(ChainSecurityError, match=r"list\.copy.*@expose"):
        run(OperationProxy().shown().copy(), target, policy=strict)
    with pytest.raises(ChainSecurityError, match=r"Recorder\.name"):
        run(OperationProxy().name(), target, policy=strict)
    assert target.log == ["shown"]


def test_limits_of_a_custom_policy_apply() -> None:
    with pytest.raises(ChainLimitError, match=r"4 > 3"):
        run(OperationProxy().name().upper(), policy=ExecutionPolicy(max_operations=3))


# -- errors from the target -------------------------------------------------------------------


class CustomError(Exception):
    pass


@pytest.mark.parametrize("error", [CustomError("mine"), ValueError("v"), KeyboardInterrupt()])
def test_exceptions_from_the_target_propagate_unchanged(error: BaseException) -> None:
    with pytest.raises(type(error)) as caught:
        run(build(GetOp("fail"), CallOp((error,))))
    assert caught.value is error


def test_python_errors_from_gets_calls_and_items_propagate_unchanged() -> None:
    p = OperationProxy()
    with pytest.raises(AttributeError, match="no_such"):
        run(p.no_such)
    with pytest.raises(TypeError, match="not callable"):
        run(p.data())
    with pytest.raises(KeyError, match="zz"):
        run(p.data["zz"])


# -- awaitables, synchronous ------------------------------------------------------------------


def test_sync_execution_refuses_a_coroutine_result_without_running_it() -> None:
    target = Recorder()
    with pytest.raises(AwaitableResultError, match=r"`later\(\)`.*must be synchronous"):
        run(OperationProxy().later(), target)
    assert target.log == []  # closed before its body ran; no "never awaited" warning


def test_sync_execution_refuses_an_awaitable_intermediate() -> None:
    target = Recorder()
    with pytest.raises(
        AwaitableResultError, match=r"`later_child\(\)`.*`later_child\(\)\.name\(\)`"
    ):
        run(OperationProxy().later_child().name(), target)
    assert target.log == []


def test_sync_execution_refuses_an_awaitable_from_a_nested_chain() -> None:
    target, p = Recorder(), OperationProxy()
    with pytest.raises(AwaitableResultError, match=r"`later\(\)`"):
        run(p.echo(p.later()), target)
    assert target.log == []


def test_sync_execution_refuses_an_awaitable_property() -> None:
    target = Recorder()
    with pytest.raises(AwaitableResultError, match="`pending`"):
        run(OperationProxy().pending, target)
    assert target.log == ["pending"]


def test_sync_execution_refuses_other_awaitables() -> None:
    target = Recorder()
    with pytest.raises(AwaitableResultError, match=r"Awaitable"):
        run(OperationProxy().awaitable(), target)
    with pytest.raises(AwaitableResultError, match=r"generator"):
        run(OperationProxy().old_style(), target)
    assert target.log == ["awaitable"]


def test_sync_execution_accepts_a_plain_generator() -> None:
    def numbers() -> Generator[int, None, None]:
        yield 1

    class Numbers:
        def make(self) -> Generator[int, None, None]:
            return numbers()

    assert list(run(OperationProxy().make(), Numbers())) == [1]


# -- awaitables, asynchronous -----------------------------------------------------------------


async def test_async_execution_awaits_calls_and_nested_async_calls() -> None:
    p = OperationProxy()
    target = Recorder()
    chain = chain_of(p.later_child().pair(p.later("a"), [p.later(p.later("b"))]))
    result = await execute_operation_chain_async(target, chain)
    assert result == ("a", ["b"])
    assert target.log.count("later-ran") == 3


async def test_async_execution_awaits_properties_and_other_awaitables() -> None:
    p = OperationProxy()
    target = Recorder()
    assert await execute_operation_chain_async(target, chain_of(p.pending)) == 7
    assert await execute_operation_chain_async(target, chain_of(p.awaitable())) == 5
    assert await execute_operation_chain_async(target, chain_of(p.old_style())) == 1


async def test_async_execution_runs_synchronous_methods_too() -> None:
    p = OperationProxy()
    chain = chain_of(p.echo(p.name("x"), k=p.data[p.name("a")]))
    assert await execute_operation_chain_async(Recorder(), chain) == (("x",), {"k": 1})


async def test_async_nested_chain_shared_twice_runs_once() -> None:
    p = OperationProxy()
    target = Recorder()
    x = p.later_child().make_list()
    first, second = await execute_operation_chain_async(target, chain_of(p.pair(x, [x])))
    assert second[0] is first
    assert target.log == ["later_child-ran", "make_list", "pair"]


async def test_async_chains_passed_directly_run_once_in_argument_order() -> None:
    p = OperationProxy()
    target = Recorder()
    x = p.name("x")
    stamp = object()  # neither a scalar, nor a container, nor a chain: passed as it is
    chain = chain_of(p.echo(x, p.name("y"), x, stamp, k=p.name("z"), again=x))
    result = await execute_operation_chain_async(target, chain)
    assert result == (("x", "y", "x", stamp), {"k": "z", "again": "x"})
    assert target.log == ["name:x", "name:y", "name:z", "echo"]


async def test_async_markers_and_item_keys_are_resolved() -> None:
    chain = build(GetOp("data"), ItemOp(build(GetOp("later"), CallOp((RESULT,)))))
    assert await execute_operation_chain_async(Recorder(), chain, inject={"result": "a"}) == 1


async def test_async_shared_containers_and_plain_items() -> None:
    shared = [build(GetOp("later"), CallOp(("x",)))]
    chain = build(GetOp("pair"), CallOp((shared, shared)), ItemOp(0))
    result = await execute_operation_chain_async(Recorder(), chain)
    assert result == ["x"]
    assert await execute_operation_chain_async(Recorder(), build(GetOp("data"), ItemOp("a"))) == 1


async def test_async_execution_refuses_before_running() -> None:
    target = Recorder()
    with pytest.raises(ChainSecurityError):
        await execute_operation_chain_async(target, build(GetOp("later"), CallOp(), GetOp("_x")))
    with pytest.raises(ChainValidationError):
        await execute_operation_chain_async(target, build(GetOp("later")), inject={"x": 1})
    assert target.log == []


async def test_async_exceptions_propagate_unchanged() -> None:
    error = CustomError("async")

    class Failing:
        async def fail(self) -> None:
            raise error

    with pytest.raises(CustomError) as caught:
        await execute_operation_chain_async(Failing(), chain_of(OperationProxy().fail()))
    assert caught.value is error


# -- properties -------------------------------------------------------------------------------


class Calculator:
    """A small fluent target: methods return the calculator or a number."""

    def __init__(self) -> None:
        self.total = 0
        self.calls: list[str] = []

    def add(self, x: int) -> Calculator:
        self.calls.append(f"add {x}")
        self.total += x
        return self

    def mul(self, x: int) -> Calculator:
        self.calls.append(f"mul {x}")
        self.total *= x
        return self

    def neg(self) -> Calculator:
        self.calls.append("neg")
        self.total = -self.total
        return self

    def value(self) -> int:
        self.calls.append("value")
        return self.total

    def clamp(self, low: int, high: int = 100) -> int:
        self.calls.append(f"clamp {low} {high}")
        return max(low, min(high, self.total))


# Random programs can exceed the default limits, which are not what this property is about.
ROOMY = ExecutionPolicy(max_operations=10_000, max_depth=50)

# A step is (method, args, kwargs); an argument is an int or a nested program (a list of steps).
ints = st.integers(-5, 5)
arguments = st.recursive(
    ints,
    lambda inner: st.lists(
        st.tuples(st.sampled_from(["add", "mul"]), st.tuples(inner), st.just({})),
        min_size=1,
        max_size=3,
    ).map(lambda steps: [*steps, ("value", (), {})]),
    max_leaves=4,
)
steps = st.one_of(
    st.tuples(st.sampled_from(["add", "mul"]), st.tuples(arguments), st.just({})),
    st.just(("neg", (), {})),
)
programs = st.tuples(
    st.lists(steps, max_size=6),
    st.one_of(
        st.just(("value", (), {})),
        st.builds(lambda low, high: ("clamp", (low,), {"high": high}), arguments, arguments),
    ),
)


def record(proxy: Any, program: list[Any], root: OperationProxy) -> Any:
    for method, args, kwargs in program:
        resolve = [nested_proxy(a, root) for a in args]
        proxy = getattr(proxy, method)(
            *resolve, **{k: nested_proxy(v, root) for k, v in kwargs.items()}
        )
    return proxy


def nested_proxy(argument: Any, root: OperationProxy) -> Any:
    return argument if isinstance(argument, int) else record(root, argument, root)


def call_directly(calculator: Calculator, program: list[Any]) -> Any:
    value: Any = calculator
    for method, args, kwargs in program:
        bound = getattr(value, method)
        resolved = [direct_argument(calculator, a) for a in args]
        value = bound(*resolved, **{k: direct_argument(calculator, v) for k, v in kwargs.items()})
    return value


def direct_argument(calculator: Calculator, argument: Any) -> Any:
    return argument if isinstance(argument, int) else call_directly(calculator, argument)


@given(programs)
def test_a_recorded_chain_gives_the_same_result_as_the_direct_calls(program: Any) -> None:
    body, last = program
    steps_ = [*body, last]
    root = OperationProxy()
    chain = chain_of(record(root, steps_, root))
    executed, direct = Calculator(), Calculator()
    result = execute_operation_chain(executed, chain, policy=ROOMY)
    assert result == call_directly(direct, steps_)
    assert executed.calls == direct.calls
    assert executed.total == direct.total


class Box:
    """What ``Logged`` returns: equal by number, and subscriptable by anything."""

    def __init__(self, number: int) -> None:
        self.number = number

    def __getitem__(self, key: Any) -> tuple[int, str]:
        return self.number, repr(key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and other.number == self.number

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Box({self.number})"


class Logged:
    """Logs every call with the arguments it received, in the order the calls came."""

    def __init__(self) -> None:
        self.log: list[Any] = []

    def f(self, *args: Any, **kwargs: Any) -> Box:
        self.log.append(("f", args, kwargs))
        return Box(len(self.log))

    def g(self, *args: Any, **kwargs: Any) -> Box:
        self.log.append(("g", args, kwargs))
        return Box(len(self.log))


@given(nested_chains())
def test_the_async_executor_runs_nested_chains_as_the_sync_one_does(chain: OperationChain) -> None:
    # The sync executor resolves every argument through ``resolve``; the async one takes a
    # single pass over plain values and chains passed directly, and gives way to the same
    # general path at the first container or marker. Both must call the same methods with
    # the same arguments in the same order.
    inject = {"result": "R", "error": "E"}
    synchronous, asynchronous = Logged(), Logged()
    expected = execute_operation_chain(synchronous, chain, inject=inject, policy=ROOMY)
    got = asyncio.run(
        execute_operation_chain_async(asynchronous, chain, inject=inject, policy=ROOMY)
    )
    assert got == expected
    assert asynchronous.log == synchronous.log


class Watched:
    """Records any attribute read, so a property test can prove that nothing ran."""

    def __init__(self) -> None:
        self.touched: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.touched.append(name)
        return lambda *args, **kwargs: self


public_names = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)
private_names = st.from_regex(r"_[a-z0-9_]{0,5}", fullmatch=True)


@st.composite
def chains_with_a_private_name(draw: st.DrawFn, depth: int = 3) -> OperationChain:
    """A chain of public gets and calls with one ``_`` name planted somewhere inside it."""
    ops: list[Any] = [GetOp(draw(public_names)), CallOp()]
    ops += [GetOp(draw(public_names)), CallOp((draw(ints),))] * draw(st.integers(0, 2))
    places = ["get", "kwarg"] + (["arg", "list", "dict", "item"] if depth else [])
    place = draw(st.sampled_from(places))
    if place == "get":
        ops.insert(draw(st.integers(0, len(ops))), GetOp(draw(private_names)))
    elif place == "kwarg":
        ops.append(CallOp((), {draw(private_names): 1}))
    else:
        bad = draw(chains_with_a_private_name(depth - 1))
        wrapped = {"arg": bad, "list": [1, [bad]], "dict": {"k": (bad,)}, "item": bad}[place]
        ops.append(ItemOp(wrapped) if place == "item" else CallOp((wrapped,)))
    ops += [GetOp(draw(public_names)), CallOp()]
    return build(*ops)


@given(chains_with_a_private_name())
def test_a_private_name_anywhere_is_refused_before_anything_runs(chain: OperationChain) -> None:
    target = Watched()
    with pytest.raises(ChainSecurityError, match="private"):
        execute_operation_chain(target, chain)
    assert target.touched == []


class _Factory:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def make(self) -> type:
        return dict

    def record(self, name: str) -> str:
        self.calls.append(name)
        return name


def test_a_refused_call_runs_none_of_its_nested_chains() -> None:
    target = _Factory()
    p = OperationProxy()
    chain = chain_of(p.make()(p.record("nested")))
    with pytest.raises(ChainSecurityError, match="class"):
        execute_operation_chain(target, chain)
    assert target.calls == []


async def test_a_refused_async_call_runs_none_of_its_nested_chains() -> None:
    target = _Factory()
    p = OperationProxy()
    chain = chain_of(p.make()(p.record("nested")))
    with pytest.raises(ChainSecurityError, match="class"):
        await execute_operation_chain_async(target, chain)
    assert target.calls == []
