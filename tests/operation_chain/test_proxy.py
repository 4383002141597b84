"""The recording proxy: what it records, nesting, aliasing and what it refuses."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operation_chain import (
    ERROR,
    RESULT,
    CallOp,
    GetOp,
    ItemOp,
    MixedRootsError,
    OperationChain,
    OperationProxy,
    chain_of,
)


def test_records_gets_items_and_calls_in_order() -> None:
    p = OperationProxy()
    chain = chain_of(p.a(1).b.c(2, k=3)["x"])
    assert chain.ops == (
        GetOp("a"),
        CallOp((1,), {}),
        GetOp("b"),
        GetOp("c"),
        CallOp((2,), {"k": 3}),
        ItemOp("x"),
    )


def test_the_root_records_an_empty_chain() -> None:
    assert chain_of(OperationProxy()).ops == ()


def test_every_step_is_a_new_proxy_and_the_parent_is_unchanged() -> None:
    p = OperationProxy()
    a = p.a
    a_one = a(1)
    a_two = a(2)
    assert chain_of(a).ops == (GetOp("a"),)
    assert chain_of(a_one).ops[-1] == CallOp((1,), {})
    assert chain_of(a_two).ops[-1] == CallOp((2,), {})


def test_a_proxy_argument_becomes_a_nested_chain() -> None:
    p = OperationProxy()
    chain = chain_of(p.combine(p.get("a"), key=p.b))
    call = chain.ops[1]
    assert isinstance(call, CallOp)
    assert isinstance(call.args[0], OperationChain)
    assert call.args[0].ops == (GetOp("get"), CallOp(("a",), {}))
    assert call.kwargs["key"].ops == (GetOp("b"),)


def test_proxies_inside_lists_tuples_dicts_and_item_keys_become_chains() -> None:
    p = OperationProxy()
    chain = chain_of(p.f([p.a], (1, p.b), {"k": [p.c]}))
    args = chain.ops[1].args  # type: ignore[union-attr]
    assert isinstance(args[0][0], OperationChain)
    assert isinstance(args[1][1], OperationChain)
    assert type(args[1]) is tuple
    assert isinstance(args[2]["k"][0], OperationChain)
    item = chain_of(p[p.key])
    assert isinstance(item.ops[0].key, OperationChain)  # type: ignore[union-attr]


def test_containers_without_proxies_are_recorded_as_the_same_objects() -> None:
    p = OperationProxy()
    payload = {"a": [1, 2]}
    items = [payload]
    chain = chain_of(p.f(payload, items, k=items))
    call = chain.ops[1]
    assert isinstance(call, CallOp)
    assert call.args[0] is payload
    assert call.args[1] is items
    assert call.kwargs["k"] is items


def test_the_same_proxy_used_twice_yields_the_same_chain_object() -> None:
    p = OperationProxy()
    x = p.load()
    chain = chain_of(p.pair(x, [x]))
    args = chain.ops[1].args  # type: ignore[union-attr]
    assert args[0] is args[1][0]
    assert chain_of(x) is chain_of(x)


def test_markers_are_recorded_as_themselves() -> None:
    p = OperationProxy()
    call = chain_of(p.handle(RESULT, err=ERROR)).ops[1]
    assert isinstance(call, CallOp)
    assert call.args[0] is RESULT
    assert call.kwargs["err"] is ERROR


def test_mixing_proxies_of_two_roots_is_refused_at_record_time() -> None:
    p, q = OperationProxy(), OperationProxy()
    with pytest.raises(MixedRootsError, match="another root"):
        p.f(q.g())
    with pytest.raises(MixedRootsError):
        p.f(items=[{"k": q}])
    with pytest.raises(MixedRootsError):
        p[q.key]


def test_dunder_names_are_not_recorded() -> None:
    p = OperationProxy()
    with pytest.raises(AttributeError):
        p.__deepcopy__  # noqa: B018
    assert not hasattr(p, "__array_interface__")
    # copy falls back to the default protocol instead of calling a recorded chain.
    assert chain_of(copy.copy(p.a)).ops == (GetOp("a"),)


def test_private_names_are_recorded_and_left_to_the_policy() -> None:
    assert chain_of(OperationProxy()._secret).ops == (GetOp("_secret"),)


def test_iteration_and_membership_are_refused_instead_of_looping_forever() -> None:
    p = OperationProxy()
    with pytest.raises(TypeError, match="not iterable"):
        list(p)
    with pytest.raises(TypeError, match="'in'"):
        1 in p  # noqa: B015


def test_assignment_is_refused() -> None:
    p = OperationProxy()
    with pytest.raises(AttributeError):
        p.name = "x"  # type: ignore[misc]


def test_a_proxy_is_truthy_and_has_a_readable_repr() -> None:
    p = OperationProxy()
    assert p.a(1)
    assert repr(p.a(1).b) == "OperationProxy('a(1).b')"


def test_chain_of_refuses_anything_but_a_proxy() -> None:
    with pytest.raises(TypeError, match="takes an OperationProxy"):
        chain_of("a")  # type: ignore[arg-type]


def test_subclasses_record_their_own_type_and_keep_class_attributes() -> None:
    class Recorder(OperationProxy):
        __slots__ = ()
        result = RESULT

    r = Recorder()
    step = r.handle(r.result)
    assert type(step) is Recorder
    assert chain_of(step).ops[1] == CallOp((RESULT,), {})


def test_only_the_containers_holding_proxies_are_rebuilt() -> None:
    p = OperationProxy()
    plain = {"a": 1}
    call = chain_of(p.f(plain, p.x, {"k": p.y})).ops[1]
    assert isinstance(call, CallOp)
    assert call.args[0] is plain
    assert isinstance(call.args[2]["k"], OperationChain)


def test_markers_are_singletons_that_survive_pickling() -> None:
    import pickle

    from operation_chain import Marker

    assert Marker("result") is RESULT
    assert pickle.loads(pickle.dumps(ERROR)) is ERROR
    with pytest.raises(ValueError, match="unknown marker"):
        Marker("later")  # type: ignore[arg-type]


def test_a_list_or_dict_that_contains_itself_is_recorded_as_the_same_object() -> None:
    p = OperationProxy()
    items: list[Any] = [1]
    items.append(items)
    table: dict[str, Any] = {}
    table["self"] = table
    call = chain_of(p.f(items, k=table)).ops[1]
    assert isinstance(call, CallOp)
    assert call.args[0] is items
    assert call.kwargs["k"] is table
    assert chain_of(p[items]).ops[0] == ItemOp(items)


def test_a_container_holding_a_proxy_and_itself_keeps_its_cycle() -> None:
    p = OperationProxy()
    items: list[Any] = [p.a]
    holder = (items,)
    items.append(items)
    items.append(holder)
    call = chain_of(p.f(items, holder)).ops[1]
    assert isinstance(call, CallOp)
    copied, copied_holder = call.args
    assert copied is not items  # rebuilt, since it held a proxy
    assert copied[0] == chain_of(p.a)
    assert copied[1] is copied
    assert copied[2] is copied_holder
    assert copied_holder[0] is copied


def test_a_container_holding_a_proxy_and_shared_by_two_arguments_stays_shared() -> None:
    p = OperationProxy()
    shared = {"k": [p.a]}
    call = chain_of(p.f(shared, [shared], k=shared)).ops[1]
    assert isinstance(call, CallOp)
    first, wrapped = call.args
    assert first is not shared
    assert wrapped[0] is first
    assert call.kwargs["k"] is first


def test_a_self_containing_argument_survives_the_codec_and_the_executor() -> None:
    from operation_chain import decode, encode, execute_operation_chain

    class Target:
        a = "A"

        def f(self, value: Any) -> Any:
            return value

    p = OperationProxy()
    items: list[Any] = [p.a]
    items.append(items)
    chain = decode(encode(chain_of(p.f(items))))
    result = execute_operation_chain(Target(), chain)
    assert result[0] == "A"
    assert result[1] is result


# -- attribute lookup: the recording shortcut must find what normal lookup finds ---------------


def test_a_subclass_getattr_still_decides_what_is_recorded() -> None:
    class Aliasing(OperationProxy):
        __slots__ = ()

        def __getattr__(self, name: str) -> Any:
            if name == "special":
                return 42
            return super().__getattr__(name)

    a = Aliasing()
    assert a.special == 42
    assert chain_of(a.other(1)).ops == (GetOp("other"), CallOp((1,), {}))


def test_class_attributes_added_or_removed_later_are_seen() -> None:
    class Base(OperationProxy):
        __slots__ = ()

    class Late(Base):
        __slots__ = ()

    p = Late()
    assert chain_of(p.value).ops == (GetOp("value"),)
    Late.value = 5  # type: ignore[attr-defined]
    assert p.value == 5
    del Late.value  # type: ignore[attr-defined]
    assert chain_of(p.value).ops == (GetOp("value"),)
    Base.inherited = "base"  # type: ignore[attr-defined]
    assert p.inherited == "base"


def test_reassigned_bases_are_seen() -> None:
    class First(OperationProxy):
        __slots__ = ()

    class Second(OperationProxy):
        __slots__ = ()
        known = "second"

    class Sub(First):
        __slots__ = ()

    p = Sub()
    assert chain_of(p.known).ops == (GetOp("known"),)
    Sub.__bases__ = (Second,)
    assert p.known == "second"


def test_a_property_raising_attribute_error_is_recorded_as_a_read() -> None:
    class Lazy(OperationProxy):
        __slots__ = ()

        @property
        def pending(self) -> Any:
            raise AttributeError("not yet")

    assert chain_of(Lazy().pending).ops == (GetOp("pending"),)


def test_instances_with_a_dict_keep_their_own_attributes() -> None:
    class Open(OperationProxy):  # no __slots__: its instances have a __dict__
        pass

    p = Open()
    p.label = "mine"
    assert p.label == "mine"
    assert chain_of(p.other).ops == (GetOp("other"),)


class Marked(OperationProxy):
    __slots__ = ("_extra",)
    result = RESULT

    def helper(self) -> str:
        return "helper"


class Aliased(OperationProxy):
    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return ("aliased", name) if name.startswith("a") else super().__getattr__(name)


class Open(Marked):
    pass


lookup_names = st.one_of(
    st.sampled_from(
        [
            "result",
            "helper",
            "_extra",
            "_proxy_ops",
            "_proxy_root",
            "__class__",
            "__init__",
            "__deepcopy__",
            "__slots__",
            "mro",
            "own",
        ]
    ),
    st.from_regex(r"_{0,2}[a-z][a-z0-9_]{0,5}", fullmatch=True),
)


def looked_up_normally(proxy: OperationProxy, name: str) -> Any:
    """What ``getattr`` gave when the proxy had ``__getattr__`` alone: the normal lookup,
    then ``__getattr__`` if it failed."""
    try:
        return object.__getattribute__(proxy, name)
    except AttributeError:
        return type(proxy).__getattr__(proxy, name)


def outcome(read: Any) -> Any:
    try:
        value = read()
    except AttributeError as exc:
        return AttributeError, str(exc)
    return ("chain", chain_of(value)) if isinstance(value, OperationProxy) else value


@given(st.sampled_from([OperationProxy, Marked, Aliased, Open]), lookup_names)
def test_attribute_reads_find_or_record_what_normal_lookup_and_getattr_would(
    cls: type[OperationProxy], name: str
) -> None:
    proxy = cls()
    if isinstance(proxy, Open):
        proxy.own = "own"
    expected = outcome(lambda: looked_up_normally(proxy, name))
    assert outcome(lambda: getattr(proxy, name)) == expected


def test_subclass_methods_are_found_and_can_derive_steps_of_their_own() -> None:
    class Stepper(OperationProxy):
        __slots__ = ()

        def step(self) -> Stepper:
            return self._proxy_derive(GetOp("step"))

    stepped = Stepper().step().then
    assert type(stepped) is Stepper
    assert chain_of(stepped).ops == (GetOp("step"), GetOp("then"))


def test_the_lookup_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from operation_chain import _proxy

    monkeypatch.setattr(_proxy, "_NAMESPACES_LIMIT", len(_proxy._NAMESPACES))
    before = dict(_proxy._NAMESPACES)

    class Fresh(OperationProxy):
        __slots__ = ()
        known = 1

    p = Fresh()
    assert p.known == 1
    assert chain_of(p.other).ops == (GetOp("other"),)
    assert before == _proxy._NAMESPACES
