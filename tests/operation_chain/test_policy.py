"""The execution policy: options, the static check, the runtime checks and ``@expose``."""

from __future__ import annotations

import functools
import inspect
import operator
import os
from functools import cached_property
from typing import Any, Generic, TypeVar

import pytest
from pydantic import ValidationError

from operation_chain._chain import CallOp, GetOp, ItemOp, OperationChain
from operation_chain._errors import (
    ChainLimitError,
    ChainSecurityError,
    ChainValidationError,
    MarkerNotInjectedError,
)
from operation_chain._executor import execute_operation_chain
from operation_chain._markers import ERROR, RESULT
from operation_chain._policy import (
    _MISSING,
    DEFAULT_POLICY,
    ExecutionPolicy,
    _class_member,
    expose,
)
from operation_chain._proxy import OperationProxy, chain_of

T = TypeVar("T")

STRICT = ExecutionPolicy(strict=True)


def build(*ops: Any) -> OperationChain:
    return OperationChain._build(tuple(ops))


def nested(depth: int, p: OperationProxy | None = None) -> OperationProxy:
    """A proxy whose chain is nested ``depth`` deep: ``wrap(wrap(leaf()))`` is depth 3."""
    p = OperationProxy() if p is None else p
    proxy = p.leaf()
    for _ in range(depth - 1):
        proxy = p.wrap(proxy)
    return proxy


def flat(operations: int) -> OperationChain:
    """A chain of exactly ``operations`` operations (gets and calls)."""
    ops: list[GetOp | CallOp] = []
    while len(ops) < operations:
        ops.append(GetOp("m") if len(ops) % 2 == 0 else CallOp())
    return build(*ops)


class Nested:
    def __init__(self) -> None:
        raise AssertionError("the static check must not instantiate anything")

    @staticmethod
    def helper() -> int:
        return 1


class Box(Generic[T]):
    pass


class Target:
    """A class whose members exercise every static rule; its property records reads."""

    Nested = Nested
    make = staticmethod(Nested)
    alias = list[int]
    generic = Box[int]
    os_module = os
    plain = 1

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.attribute = 2

    def method(self) -> int:
        return 3

    @property
    def prop(self) -> int:
        self.reads.append("prop")
        return 4

    def __getattr__(self, name: str) -> Any:
        self.reads.append(name)
        raise AttributeError(name)


class Exposed:
    """Members of every kind, exposed or not, for strict mode."""

    def __init__(self) -> None:
        self.attribute = 1

    @expose
    def shown(self) -> list[int]:
        return [1]

    def hidden(self) -> int:
        return 2

    @property
    @expose
    def shown_prop(self) -> int:
        return 3

    def _get_outer(self) -> int:
        return 30

    # ``@expose`` above ``@property`` works too; mypy refuses decorators over a property.
    shown_prop_outer = expose(property(_get_outer))

    @property
    def hidden_prop(self) -> int:
        return 4

    @expose
    @classmethod
    def shown_cls(cls) -> int:
        return 5

    @classmethod
    @expose
    def shown_cls_inner(cls) -> int:
        return 6

    @staticmethod
    @expose
    def shown_static() -> int:
        return 7

    @expose
    @staticmethod
    def shown_static_outer() -> int:
        return 8

    @cached_property
    @expose
    def shown_cached(self) -> int:
        return 9

    shown_cached_outer = expose(cached_property(_get_outer))

    @expose
    async def shown_async(self) -> int:
        return 10


class ExposedChild(Exposed):
    def hidden(self) -> int:  # still unexposed
        return 20

    def shown(self) -> list[int]:  # an override without @expose is not exposed
        return [21]


# -- options ----------------------------------------------------------------------------------


def test_defaults_are_the_documented_limits() -> None:
    policy = ExecutionPolicy()
    assert (
        policy.max_operations,
        policy.max_arguments,
        policy.max_depth,
        policy.max_encoded_size,
        policy.strict,
    ) == (50, 100, 8, 1_048_576, False)
    assert policy == DEFAULT_POLICY


@pytest.mark.parametrize(
    "options",
    [
        {"max_operations": 0},
        {"max_arguments": -1},
        {"max_depth": 0},
        {"max_encoded_size": 0},
        {"max_operations": "5"},
        {"max_depth": True},
        {"max_arguments": 1.5},
        {"strict": "yes"},
        {"strict": 1},
        {"max_ops": 5},
    ],
)
def test_bad_options_are_refused_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ExecutionPolicy(**options)


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        ExecutionPolicy(5)  # type: ignore[call-arg, misc]


def test_the_policy_is_immutable() -> None:
    with pytest.raises(ValidationError):
        DEFAULT_POLICY.strict = True  # type: ignore[misc]


# -- private names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chain",
    [
        build(GetOp("_private")),
        build(GetOp("__class__")),
        build(GetOp("ok"), CallOp(), GetOp("fine"), CallOp(), GetOp("_late")),
        build(GetOp("f"), CallOp((build(GetOp("_x")),))),
        build(GetOp("f"), CallOp(([1, (2, build(GetOp("__dict__")))],))),
        build(GetOp("f"), CallOp((), {"k": {"a": build(GetOp("g"), GetOp("_h"))}})),
        build(ItemOp(build(GetOp("_key")))),
        build(GetOp("f"), CallOp((), {"_secret": 1})),
        build(GetOp("f"), CallOp((build(GetOp("g"), CallOp((), {"__kw": 1})),))),
    ],
    ids=[
        "top",
        "dunder",
        "late",
        "nested",
        "deep-list",
        "dict-value",
        "item-key",
        "kw",
        "nested-kw",
    ],
)
def test_check_refuses_private_names_anywhere(chain: OperationChain) -> None:
    with pytest.raises(ChainSecurityError, match="private"):
        DEFAULT_POLICY.check(chain)


def test_check_accepts_a_plain_chain_and_returns_none() -> None:
    p = OperationProxy()
    chain = chain_of(p.a(1, [p.b], k={"x": (p.c(), RESULT)})["key"].d)
    DEFAULT_POLICY.check(chain)


def test_a_private_name_in_a_dict_key_or_set_is_just_data() -> None:
    chain = build(GetOp("f"), CallOp(({"_key": 1}, {"_member"}, "_text")))
    DEFAULT_POLICY.check(chain)


# -- limits -----------------------------------------------------------------------------------


def test_max_operations_allows_exactly_the_limit() -> None:
    DEFAULT_POLICY.check(flat(50))


def test_one_operation_over_the_limit_is_refused_with_the_count() -> None:
    with pytest.raises(ChainLimitError, match=r"51 > 50 \(max_operations\)") as caught:
        DEFAULT_POLICY.check(flat(51))
    assert "operations" in str(caught.value)


def test_operations_of_nested_chains_count_toward_the_limit() -> None:
    inner = flat(21)
    outer = build(GetOp("f"), CallOp((inner,)), *flat(28).ops)  # 30 + 21 operations
    with pytest.raises(ChainLimitError, match=r"51 > 50") as caught:
        DEFAULT_POLICY.check(outer)
    assert "nested" in str(caught.value)


def test_a_nested_chain_used_several_times_counts_once() -> None:
    shared = flat(20)
    outer = build(GetOp("f"), CallOp((shared, [shared], {"k": shared}), {"kw": shared}))
    DEFAULT_POLICY.check(outer)  # 2 + 20 operations; 82 if counted per use


def test_max_arguments_allows_exactly_the_limit() -> None:
    DEFAULT_POLICY.check(
        build(GetOp("f"), CallOp(tuple(range(60)), {f"k{i}": i for i in range(40)}))
    )


def test_one_argument_over_the_limit_is_refused_with_the_count() -> None:
    with pytest.raises(ChainLimitError, match=r"101 > 100 \(max_arguments\)"):
        DEFAULT_POLICY.check(
            build(GetOp("f"), CallOp(tuple(range(60)), {f"k{i}": i for i in range(41)}))
        )


def test_max_arguments_applies_to_nested_calls() -> None:
    inner = build(GetOp("g"), CallOp(tuple(range(101))))
    with pytest.raises(ChainLimitError, match=r"101 > 100"):
        DEFAULT_POLICY.check(build(GetOp("f"), CallOp((inner,))))


def test_max_depth_allows_exactly_the_limit() -> None:
    DEFAULT_POLICY.check(chain_of(nested(8)))


def test_nesting_one_deeper_than_the_limit_is_refused() -> None:
    with pytest.raises(ChainLimitError, match=r"9 > 8 \(max_depth"):
        DEFAULT_POLICY.check(chain_of(nested(9)))


def test_nesting_inside_containers_counts_as_nesting() -> None:
    p = OperationProxy()
    proxy = p.leaf()
    for _ in range(8):
        proxy = p.wrap([{"k": (proxy,)}])
    with pytest.raises(ChainLimitError, match=r"9 > 8"):
        DEFAULT_POLICY.check(chain_of(proxy))


def test_a_shared_chain_met_again_deeper_is_measured_at_its_deepest() -> None:
    p = OperationProxy()
    shared = nested(3, p)  # height 3
    deep: Any = shared
    for _ in range(6):
        deep = p.w(deep)
    # ``shared`` is first walked at depth 2, then met again at depth 8: 8 + 3 - 1 = 10.
    with pytest.raises(ChainLimitError, match=r"10 > 8"):
        DEFAULT_POLICY.check(chain_of(p.f(shared, deep)))


def test_custom_limits_apply() -> None:
    policy = ExecutionPolicy(max_operations=3, max_arguments=1, max_depth=1)
    with pytest.raises(ChainLimitError, match=r"4 > 3"):
        policy.check(flat(4))
    with pytest.raises(ChainLimitError, match=r"2 > 1"):
        policy.check(build(GetOp("f"), CallOp((1, 2))))
    with pytest.raises(ChainLimitError, match=r"2 > 1"):
        policy.check(chain_of(nested(2)))


def test_encoded_size_allows_exactly_the_limit() -> None:
    DEFAULT_POLICY.check_encoded_size(1_048_576)


def test_encoded_size_over_the_limit_is_refused() -> None:
    with pytest.raises(ChainLimitError, match=r"1048577 > 1048576 \(max_encoded_size\)"):
        DEFAULT_POLICY.check_encoded_size(1_048_577)


def test_limit_errors_are_security_errors() -> None:
    assert issubclass(ChainLimitError, ChainSecurityError)


# -- malformed chains -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        (build("get a"), "unknown operation"),
        (build(GetOp(3)), "must be strings"),  # type: ignore[arg-type]
        (build(GetOp("f"), CallOp((), {1: 2})), "must be strings"),  # type: ignore[dict-item]
        (build(GetOp("f"), CallOp([1, 2])), "malformed call"),  # type: ignore[arg-type]
        (build(GetOp("f"), CallOp((), [("k", 1)])), "malformed call"),  # type: ignore[arg-type]
    ],
)
def test_malformed_chains_are_refused(chain: OperationChain, message: str) -> None:
    with pytest.raises(ChainValidationError, match=message):
        DEFAULT_POLICY.check(chain)


def test_check_takes_only_a_chain() -> None:
    with pytest.raises(TypeError, match="OperationChain, not OperationProxy"):
        DEFAULT_POLICY.check(OperationProxy())  # type: ignore[arg-type]


def test_a_chain_that_contains_itself_is_refused() -> None:
    holder: list[Any] = []
    chain = build(GetOp("f"), CallOp((holder,)))
    holder.append(chain)
    with pytest.raises(ChainValidationError, match="contains itself"):
        DEFAULT_POLICY.check(chain)


def test_a_nested_chain_that_contains_itself_is_refused() -> None:
    holder: list[Any] = []
    inner = build(GetOp("g"), CallOp((holder,)))
    holder.append(inner)
    with pytest.raises(ChainValidationError, match="contains itself"):
        DEFAULT_POLICY.check(build(GetOp("f"), CallOp((inner,))))


def test_a_chain_reaching_itself_through_shared_containers_is_refused() -> None:
    # outer = [middle, inner]; middle = [outer]; inner's argument is middle: the walk meets
    # middle first (no chain on that path), so the cycle through inner must still be found.
    outer: list[Any] = []
    middle: list[Any] = [outer]
    inner = build(GetOp("g"), CallOp((middle,)))
    outer.extend([middle, inner])
    with pytest.raises(ChainValidationError, match="contains itself"):
        DEFAULT_POLICY.check(build(GetOp("f"), CallOp((outer,))))


def test_cyclic_and_shared_argument_data_is_fine() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    shared = [1, 2]
    DEFAULT_POLICY.check(build(GetOp("f"), CallOp((cyclic, shared, [shared, shared]))))


# -- markers ----------------------------------------------------------------------------------


def test_markers_are_not_checked_unless_asked() -> None:
    DEFAULT_POLICY.check(build(GetOp("f"), CallOp((RESULT, ERROR))))


def test_a_marker_that_will_not_be_injected_is_refused_before_running() -> None:
    chain = build(GetOp("f"), CallOp(([{"k": (ERROR,)}],)))
    DEFAULT_POLICY.check(chain, injected={"error"})
    with pytest.raises(MarkerNotInjectedError, match=r"<error>.*inject=\{'error': \.\.\.\}"):
        DEFAULT_POLICY.check(chain, injected={"result"})


# -- what the target's class reveals ----------------------------------------------------------


@pytest.mark.parametrize(
    ("make_proxy", "message"),
    [
        (lambda p: p.Nested(), "class 'Nested'"),
        (lambda p: p.make(), "class 'Nested'"),
        (lambda p: p.alias(), "class 'list\\[int\\]'"),
        (lambda p: p.generic(), "Box\\[int\\]"),
        (lambda p: p.method(p.Nested()), "class 'Nested'"),
        (lambda p: p.os_module, "module 'os'"),
        (lambda p: p.os_module.getcwd(), "module 'os'"),
    ],
    ids=["class", "staticmethod-class", "alias", "generic", "nested", "module", "module-call"],
)
def test_check_refuses_what_the_targets_class_reveals(make_proxy: Any, message: str) -> None:
    chain = chain_of(make_proxy(OperationProxy()))
    with pytest.raises(ChainSecurityError, match=message):
        DEFAULT_POLICY.check(chain, Target())


def test_reading_a_class_attribute_without_calling_it_is_allowed() -> None:
    DEFAULT_POLICY.check(chain_of(OperationProxy().Nested.helper()), Target())


def test_the_static_check_runs_no_property_and_no_getattr() -> None:
    target, p = Target(), OperationProxy()
    DEFAULT_POLICY.check(chain_of(p.prop.bit_length()), target)
    DEFAULT_POLICY.check(chain_of(p.missing()), target)
    with pytest.raises(ChainSecurityError):
        STRICT.check(chain_of(p.prop), target)
    assert target.reads == []


def test_calling_a_class_target_or_reading_a_module_target_is_refused() -> None:
    p = OperationProxy()
    with pytest.raises(ChainSecurityError, match="class 'Target'"):
        DEFAULT_POLICY.check(chain_of(p()), Target)
    with pytest.raises(ChainSecurityError, match="module 'os'"):
        DEFAULT_POLICY.check(chain_of(p.getcwd()), os)


def test_without_a_target_nothing_is_looked_up() -> None:
    DEFAULT_POLICY.check(chain_of(OperationProxy().Nested()))


def test_a_first_item_operation_needs_no_class_lookup() -> None:
    DEFAULT_POLICY.check(chain_of(OperationProxy()[0]), [1])


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (Target, "method"),
        (Target, "prop"),
        (Target, "plain"),
        (Target, "make"),
        (Target, "missing"),
        (Target, "attribute"),
        (ExposedChild, "shown"),
        (ExposedChild, "shown_prop"),
        (ExposedChild, "shown_cls"),
        (bool, "bit_length"),
    ],
)
def test_the_class_lookup_agrees_with_getattr_static(cls: type, name: str) -> None:
    expected = inspect.getattr_static(cls, name, _MISSING)
    assert _class_member(cls, name) is expected


# -- runtime checks ---------------------------------------------------------------------------


def test_check_get_refuses_private_names_and_module_attributes() -> None:
    with pytest.raises(ChainSecurityError, match="private"):
        DEFAULT_POLICY.check_get(Target(), "_x")
    with pytest.raises(ChainSecurityError, match="module 'os'"):
        DEFAULT_POLICY.check_get(os, "getcwd")
    DEFAULT_POLICY.check_get(Target(), "method")


def _generator() -> Any:
    yield 1


async def _coroutine() -> None:
    pass


async def _async_generator() -> Any:
    yield 1


def _internals() -> list[Any]:
    try:
        raise ValueError
    except ValueError as error:
        traceback = error.__traceback__
    assert traceback is not None
    coroutine = _coroutine()
    coroutine.close()
    return [
        _generator(),
        coroutine,
        _async_generator(),
        traceback,
        traceback.tb_frame,
        _generator.__code__,
    ]


@pytest.mark.parametrize(
    "obj", _internals(), ids=["generator", "coroutine", "async-gen", "traceback", "frame", "code"]
)
def test_check_get_refuses_attributes_of_interpreter_internals(obj: object) -> None:
    with pytest.raises(ChainSecurityError, match="not reachable"):
        DEFAULT_POLICY.check_get(obj, "gi_frame")


def test_the_static_check_refuses_a_chain_run_against_an_internal_object() -> None:
    with pytest.raises(ChainSecurityError, match="generator object"):
        DEFAULT_POLICY.check(chain_of(OperationProxy().gi_frame), _generator())


@pytest.mark.parametrize(
    "callee",
    [type, int, object, Nested, Exception, list[int], Box[int], os],
    ids=["type", "int", "object", "user", "exception", "alias", "generic", "module"],
)
def test_check_call_refuses_classes_generics_and_modules(callee: object) -> None:
    with pytest.raises(ChainSecurityError, match=r"not callable|not reachable"):
        DEFAULT_POLICY.check_call(callee)


class _Callable:
    def __call__(self) -> None:
        pass


@pytest.mark.parametrize(
    "callee",
    [len, Target().method, Target.method, lambda: None, _Callable(), "text".upper],
    ids=["builtin", "bound", "function", "lambda", "callable-object", "builtin-method"],
)
def test_check_call_allows_functions_and_callable_objects(callee: object) -> None:
    DEFAULT_POLICY.check_call(callee)


# -- strict mode ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "shown",
        "shown_prop",
        "shown_prop_outer",
        "shown_cls",
        "shown_cls_inner",
        "shown_static",
        "shown_static_outer",
        "shown_cached",
        "shown_cached_outer",
        "shown_async",
    ],
)
def test_strict_mode_allows_exposed_members(name: str) -> None:
    STRICT.check_get(Exposed(), name)
    STRICT.check(build(GetOp(name)), Exposed())


@pytest.mark.parametrize("name", ["hidden", "hidden_prop", "missing"])
def test_strict_mode_refuses_unexposed_members_by_name(name: str) -> None:
    with pytest.raises(ChainSecurityError, match=rf"Exposed\.{name}.*mark it with @expose"):
        STRICT.check_get(Exposed(), name)
    with pytest.raises(ChainSecurityError, match=rf"Exposed\.{name}"):
        STRICT.check(build(GetOp(name)), Exposed())


def test_strict_mode_refuses_instance_attributes_with_a_hint() -> None:
    with pytest.raises(ChainSecurityError, match="instance attributes cannot be exposed"):
        STRICT.check_get(Exposed(), "attribute")


def test_strict_mode_checks_the_first_get_of_nested_chains() -> None:
    p = OperationProxy()
    with pytest.raises(ChainSecurityError, match=r"Exposed\.hidden"):
        STRICT.check(chain_of(p.shown(p.hidden())), Exposed())


def test_an_inherited_exposed_member_stays_exposed_but_an_override_must_expose_again() -> None:
    STRICT.check_get(ExposedChild(), "shown_prop")
    with pytest.raises(ChainSecurityError, match=r"ExposedChild\.shown"):
        STRICT.check_get(ExposedChild(), "shown")


def test_strict_mode_refuses_members_of_returned_builtins() -> None:
    with pytest.raises(ChainSecurityError, match=r"list\.append"):
        STRICT.check_get([], "append")


def test_strict_mode_still_refuses_private_names_first() -> None:
    with pytest.raises(ChainSecurityError, match="private"):
        STRICT.check_get(Exposed(), "_shown")


def test_strict_mode_allows_subscription() -> None:
    p = OperationProxy()
    STRICT.check(chain_of(p.shown()[0]), Exposed())


def test_a_strict_module_target_is_refused_as_a_module() -> None:
    with pytest.raises(ChainSecurityError, match="module 'os'"):
        STRICT.check(chain_of(OperationProxy().getcwd()), os)


# -- expose -----------------------------------------------------------------------------------


def test_expose_returns_the_member_unchanged() -> None:
    def f(self: object) -> None:
        pass

    prop = property(f)
    static = staticmethod(f)
    assert expose(f) is f
    assert expose(prop) is prop
    assert expose(static) is static


@pytest.mark.parametrize(
    "member",
    [42, len, property(), "text", _Callable()],
    ids=["int", "builtin", "no-fget", "str", "obj"],
)
def test_expose_refuses_what_it_cannot_mark(member: object) -> None:
    with pytest.raises(TypeError, match="expose\\(\\) marks"):
        expose(member)


def test_a_non_function_class_attribute_is_never_exposed() -> None:
    class Holder:
        value = 3
        builtin = len

    with pytest.raises(ChainSecurityError):
        STRICT.check_get(Holder(), "value")
    with pytest.raises(ChainSecurityError):
        STRICT.check_get(Holder(), "builtin")


class _Formatting:
    template = "{0.__init__.__globals__}"

    def echo(self, text: str) -> str:
        return text

    make = functools.partial(dict)
    make_twice = functools.partial(functools.partial(dict))


@pytest.mark.parametrize(
    "build",
    [
        lambda p: p.template.format(p),
        lambda p: p.echo("{0}").format_map({}),
        lambda p: p.make(),
        lambda p: p.make_twice(),
    ],
    ids=["str.format", "str.format_map", "partial-of-class", "partial-of-partial"],
)
def test_format_strings_and_partials_of_classes_are_refused(build: Any) -> None:
    with pytest.raises(ChainSecurityError):
        execute_operation_chain(_Formatting(), chain_of(build(OperationProxy())))


def test_other_string_methods_and_partials_of_functions_stay_callable() -> None:
    class Target:
        def echo(self, text: str) -> str:
            return text

        add = functools.partial(operator.add, 1)

    p = OperationProxy()
    assert execute_operation_chain(Target(), chain_of(p.echo("a b").split())) == ["a", "b"]
    assert execute_operation_chain(Target(), chain_of(p.add(2))) == 3


def test_a_member_replaced_by_a_class_after_a_cached_verdict_is_still_refused_in_time() -> None:
    class Mutable:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def make(self, value: object) -> object:
            return value

        def record(self, name: str) -> str:
            self.calls.append(name)
            return name

    target = Mutable()
    p = OperationProxy()
    chain = chain_of(p.make(p.record("nested")))
    assert execute_operation_chain(target, chain) == "nested"  # the verdict is now cached
    Mutable.make = dict  # type: ignore[assignment,method-assign]
    target.calls.clear()
    with pytest.raises(ChainSecurityError, match="class 'dict'"):
        execute_operation_chain(target, chain)
    assert target.calls == []


def test_the_first_member_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from operation_chain import _policy

    monkeypatch.setattr(_policy, "_PASSED_FIRST_LIMIT", len(_policy._PASSED_FIRST))
    before = set(_policy._PASSED_FIRST)

    class Fresh:
        def ping(self) -> str:
            return "pong"

    assert execute_operation_chain(Fresh(), chain_of(OperationProxy().ping())) == "pong"
    assert before == _policy._PASSED_FIRST


# -- precheck ----------------------------------------------------------------------------------


class Walks:
    """Counts the full static walks made while it is installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from operation_chain import _policy

        self.count = 0
        original = _policy._StaticCheck
        counter = self

        class Counting(original):  # type: ignore[misc,valid-type]
            __slots__ = ()

            def run(self, chain: OperationChain) -> None:
                counter.count += 1
                super().run(chain)

        monkeypatch.setattr(_policy, "_StaticCheck", Counting)


class Pipeline:
    def ping(self) -> int:
        return 1

    def add(self, a: int, b: int) -> int:
        return a + b


def pipelined() -> OperationChain:
    p = OperationProxy()
    value = p.ping()
    for _ in range(3):
        value = p.add(value, 1)
    return chain_of(value)


def test_a_prechecked_chain_is_not_walked_again_when_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chain = pipelined()
    DEFAULT_POLICY.precheck(chain)
    walks = Walks(monkeypatch)
    assert execute_operation_chain(Pipeline(), chain) == 4
    DEFAULT_POLICY.check(chain)
    DEFAULT_POLICY.check(chain, injected={"result"})
    assert walks.count == 0


@pytest.mark.parametrize(
    ("chain", "error"),
    [
        (chain_of(OperationProxy()._secret()), ChainSecurityError),
        (flat(51), ChainLimitError),
        (chain_of(nested(9)), ChainLimitError),
        (chain_of(OperationProxy().f(RESULT)), MarkerNotInjectedError),
        (build(GetOp("a"), "not an op"), ChainValidationError),
    ],
)
def test_precheck_refuses_what_check_refuses_and_notes_nothing(
    chain: OperationChain, error: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(error):
        DEFAULT_POLICY.precheck(chain)
    walks = Walks(monkeypatch)
    with pytest.raises(error):
        DEFAULT_POLICY.check(chain, injected=frozenset())
    assert walks.count == 1


def test_a_prechecked_chain_still_meets_the_checks_that_need_the_target() -> None:
    p = OperationProxy()
    for chain, message in [
        (chain_of(p.Nested()), "class 'Nested'"),
        (chain_of(p.method(p.Nested())), "class 'Nested'"),
        (chain_of(p.method(p.os_module)), "module 'os'"),
    ]:
        DEFAULT_POLICY.precheck(chain)
        with pytest.raises(ChainSecurityError, match=message):
            DEFAULT_POLICY.check(chain, Target())
    called = chain_of(p(p.method()))
    DEFAULT_POLICY.precheck(called)
    with pytest.raises(ChainSecurityError, match="class 'Target'"):
        DEFAULT_POLICY.check(called, Target)
    subscripted = chain_of(p[0])
    DEFAULT_POLICY.precheck(subscripted)
    DEFAULT_POLICY.check(subscripted, [1])
    hidden = chain_of(p.hidden())
    STRICT.precheck(hidden)  # exposure needs the target's class
    with pytest.raises(ChainSecurityError, match="@expose"):
        STRICT.check(hidden, Exposed())


def test_the_note_holds_for_its_own_policy_only(monkeypatch: pytest.MonkeyPatch) -> None:
    chain = pipelined()
    DEFAULT_POLICY.precheck(chain)
    stricter = ExecutionPolicy(max_operations=3)
    with pytest.raises(ChainLimitError):
        stricter.check(chain)
    walks = Walks(monkeypatch)
    ExecutionPolicy().check(chain)  # equal to the default, but another policy
    assert walks.count == 1


def test_the_note_holds_for_the_operations_it_saw_only() -> None:
    import copy

    chain = chain_of(OperationProxy().ping())
    DEFAULT_POLICY.precheck(chain)
    changed = copy.copy(chain)  # the copy shares the note (and the operations)
    object.__setattr__(changed, "__dict__", {"ops": (GetOp("_secret"), CallOp())})
    with pytest.raises(ChainSecurityError, match="private"):
        DEFAULT_POLICY.check(changed)


def test_the_note_covers_the_markers_it_allowed_and_no_others() -> None:
    chain = chain_of(OperationProxy().handle(RESULT))
    DEFAULT_POLICY.precheck(chain, injected={"result"})
    DEFAULT_POLICY.check(chain, injected={"result", "error"})
    with pytest.raises(MarkerNotInjectedError):
        DEFAULT_POLICY.check(chain, injected={"error"})


def test_precheck_takes_only_a_chain() -> None:
    with pytest.raises(TypeError, match="takes an OperationChain"):
        DEFAULT_POLICY.precheck("p.a()")  # type: ignore[arg-type]
