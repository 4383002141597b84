"""ValueGraph: finding values in a chain's arguments and replacing them, keeping shape."""

from __future__ import annotations

from typing import Any

from operation_chain import CallOp, GetOp, OperationChain, OperationProxy, chain_of
from rpc._graph import ValueGraph, has_values


class Leaf:
    def __repr__(self) -> str:
        return "Leaf()"


def test_a_chain_with_scalar_arguments_has_nothing_to_find() -> None:
    p = OperationProxy()
    graph = ValueGraph(chain_of(p.a(1, "x", b=None).b[2]))
    assert (graph.chains, graph.leaves) == ([], [])


def test_nested_chains_and_leaves_are_found_once_in_order() -> None:
    p = OperationProxy()
    leaf = Leaf()
    inner = p.get(leaf)
    chain = chain_of(p.f([inner, {"k": inner}], (leaf,), key=p.g())[p.h()])
    graph = ValueGraph(chain)
    assert [str(c) for c in graph.chains] == ["get(Leaf())", "g()", "h()"]
    assert graph.leaves == [leaf]


def test_stop_records_a_chain_without_entering_it() -> None:
    p = OperationProxy()
    leaf = Leaf()
    inner = chain_of(p.get(leaf))
    graph = ValueGraph(chain_of(p.f(p.get(leaf))), stop=lambda c: True)
    assert [str(c) for c in graph.chains] == [str(inner)]
    assert graph.leaves == []


def test_replace_rebuilds_only_the_path_to_a_replaced_value() -> None:
    p = OperationProxy()
    leaf = Leaf()
    untouched = [1, 2]
    chain = chain_of(p.f(untouched, [leaf], {"a": (leaf, 3)}, k=leaf)[leaf])
    copy = ValueGraph(chain).replace({id(leaf): "new"})
    call, item = copy.ops[1], copy.ops[2]
    assert call.args == ([1, 2], ["new"], {"a": ("new", 3)})  # type: ignore[union-attr]
    assert call.args[0] is untouched  # type: ignore[union-attr]
    assert call.kwargs == {"k": "new"}  # type: ignore[union-attr]
    assert item.key == "new"  # type: ignore[union-attr]
    assert str(chain) == "f([1, 2], [Leaf()], {'a': (Leaf(), 3)}, k=Leaf())[Leaf()]"


def test_replace_returns_the_chain_itself_when_nothing_changes() -> None:
    p = OperationProxy()
    chain = chain_of(p.f([Leaf()]))
    assert ValueGraph(chain).replace({}) is chain
    assert ValueGraph(chain).replace({id(object()): 1}) is chain


def test_replace_keeps_sharing_and_cycles() -> None:
    leaf = Leaf()
    shared: list[Any] = [leaf]
    cyclic: list[Any] = [leaf]
    cyclic.append(cyclic)
    looped: dict[str, Any] = {"leaf": leaf}
    looped["me"] = (looped,)
    # Built directly: the recording proxy does not take cyclic arguments.
    chain = OperationChain.model_construct(
        ops=(GetOp("f"), CallOp((shared, shared, cyclic, looped), {}))
    )
    a, b, c, d = ValueGraph(chain).replace({id(leaf): 7}).ops[1].args  # type: ignore[union-attr]
    assert a is b
    assert a == [7]
    assert c[0] == 7
    assert c[1] is c
    assert d["leaf"] == 7
    assert d["me"][0] is d


def test_replace_reaches_into_nested_chains_and_can_replace_a_chain() -> None:
    p = OperationProxy()
    leaf = Leaf()
    nested = p.get(leaf)
    chain = chain_of(p.f(nested, p.g(nested)))
    graph = ValueGraph(chain)
    swapped = graph.replace({id(leaf): 1})
    assert str(swapped) == "f(get(1), g(get(1)))"
    first, second = swapped.ops[1].args  # type: ignore[union-attr]
    assert second.ops[1].args[0] is first  # shared nested chains stay shared
    assert str(graph.replace({id(chain_of(nested)): "r"})) == "f('r', g('r'))"


def test_a_chain_reachable_from_its_own_arguments_is_copied_once() -> None:
    p = OperationProxy()
    leaf = Leaf()
    holder: list[Any] = [leaf]
    inner = chain_of(p.get(holder))
    holder.append(inner)
    copy = ValueGraph(chain_of(p.f(holder))).replace({id(leaf): 0})
    new_holder = copy.ops[1].args[0]  # type: ignore[union-attr]
    assert new_holder[0] == 0
    assert new_holder[1].ops[1].args[0] is new_holder


def test_has_values_looks_at_positional_and_keyword_arguments_and_keys() -> None:
    p = OperationProxy()
    assert not has_values(chain_of(p.a(1, "x", k=2.5)[3]))
    assert has_values(chain_of(p.a([1])))
    assert has_values(chain_of(p.a(k=[1])))
    assert has_values(chain_of(p.a()[(1, 2)]))
