"""The chain model: its JSON form, versioning, rendering and hostile input."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from operation_chain import (
    CHAIN_VERSION,
    ERROR,
    RESULT,
    CallOp,
    ChainLimitError,
    ChainValidationError,
    DecodeError,
    ExecutionPolicy,
    GetOp,
    ItemOp,
    OperationChain,
    OperationChainError,
    OperationProxy,
    chain_of,
    decode,
    encode,
)
from tests.operation_chain.chain_strategies import nested_chains
from tests.strategies import equivalent, values

names = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)


@st.composite
def chains(draw: st.DrawFn, depth: int = 2) -> OperationChain:
    """Random chains: gets, items and calls, with values and nested chains as arguments."""
    p = OperationProxy()
    node: Any = p
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["get", "item", "call"]))
        if kind == "get":
            node = getattr(node, draw(names))
        elif kind == "item":
            node = node[draw(st.one_of(st.integers(), st.text(max_size=4)))]
        else:
            arg = st.one_of(values(), st.just(RESULT))
            if depth:
                arg = st.one_of(arg, chains(depth - 1))
            args = draw(st.lists(arg, max_size=3))
            kwargs = draw(st.dictionaries(names, arg, max_size=2))
            node = node(*args, **kwargs)
    return chain_of(node)


def build(*ops: Any) -> OperationChain:
    return OperationChain(ops=ops)


# -- the JSON form ------------------------------------------------------------------------------


def test_the_json_form_is_versioned_and_readable() -> None:
    p = OperationProxy()
    chain = chain_of(p.combine(p.get("a"), RESULT))
    assert orjson.loads(chain.to_json()) == {
        "v": 1,
        "ops": [
            {"op": "get", "name": "combine"},
            {
                "op": "call",
                "args": [
                    {
                        "$chain": [
                            {"op": "get", "name": "get"},
                            {"op": "call", "args": ["a"], "kwargs": {}},
                        ]
                    },
                    {"$marker": "result"},
                ],
                "kwargs": {},
            },
        ],
    }
    assert CHAIN_VERSION == OperationChain.VERSION == 1


@settings(max_examples=150)
@given(chains())
def test_chain_json_roundtrips(chain: OperationChain) -> None:
    back = OperationChain.from_json(chain.to_json())
    assert equivalent(back, chain)
    # Not byte equality: a rebuilt set may iterate its members in another order.
    assert equivalent(OperationChain.from_json(back.to_json()), chain)


@settings(max_examples=150)
@given(nested_chains())
def test_chains_nesting_chains_roundtrip_with_their_sharing(chain: OperationChain) -> None:
    # Nested chains passed directly take the decoder's shortcut; inside lists and dicts, or
    # written as $id/$ref when used twice, they take the general one. Both must rebuild the
    # same chain, sharing the same nested chain objects where the original did.
    for back in (
        OperationChain.from_parsed_json(orjson.loads(chain.to_json())),
        OperationChain.model_validate(orjson.loads(chain.to_json())),
        decode(encode(chain)),
    ):
        assert equivalent(back, chain)
        assert _nested_identity(back) == _nested_identity(chain)


def _nested_identity(chain: OperationChain) -> list[int]:
    """For each nested chain met walking the arguments, the index of its first meeting."""
    first: dict[int, int] = {}
    shape: list[int] = []

    def visit(value: Any) -> None:
        if isinstance(value, OperationChain):
            shape.append(first.setdefault(id(value), len(first)))
            for op in value.ops:
                for item in _op_values(op):
                    visit(item)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    visit(chain)
    return shape


def _op_values(op: Any) -> list[Any]:
    if isinstance(op, CallOp):
        return [*op.args, *op.kwargs.values()]
    return [op.key] if isinstance(op, ItemOp) else []


def test_pydantic_entry_points_use_the_same_json_form() -> None:
    p = OperationProxy()
    chain = chain_of(p.rooms["a"].post("hi", at=b"\x00"))
    assert chain.model_dump_json().encode() == chain.to_json()
    assert OperationChain.model_validate_json(chain.to_json()) == chain
    assert OperationChain.model_validate_json(bytearray(chain.to_json())) == chain
    assert OperationChain.model_validate(orjson.loads(chain.to_json())) == chain
    assert chain.model_dump() == orjson.loads(chain.to_json())


def test_a_chain_can_be_a_field_of_another_model() -> None:
    class Envelope(BaseModel):
        id: int
        chain: OperationChain

    p = OperationProxy()
    env = Envelope(id=1, chain=chain_of(p.add(1, 2)))
    back = Envelope.model_validate_json(env.model_dump_json())
    assert back == env
    with pytest.raises(ChainValidationError, match="version 2"):
        Envelope.model_validate_json('{"id": 1, "chain": {"v": 2, "ops": []}}')


def test_python_construction_takes_operation_objects() -> None:
    chain = build(GetOp("a"), ItemOp(0), CallOp((1,), {"k": 2}))
    assert str(chain) == "a[0](1, k=2)"
    assert len(chain) == 3


def test_chains_are_frozen_and_unhashable_like_their_arguments() -> None:
    chain = build(GetOp("a"))
    with pytest.raises(Exception, match="frozen"):
        chain.ops = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(chain)


def test_chain_equality_compares_operations() -> None:
    assert build(GetOp("a")) == build(GetOp("a"))
    assert build(GetOp("a")) != build(ItemOp("a"))
    assert build(GetOp("a")) != "a"


# -- versioning and malformed input -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"ops": []}', "version None"),
        (b'{"v": 2, "ops": []}', "version 2"),
        (b'{"v": "1", "ops": []}', "version '1'"),
        (b'{"v": true, "ops": []}', "version True"),
        (b'{"v": 1, "ops": [], "x": 1}', "not \\['x'\\]"),
        (b'{"v": 1, "ops": {}}', "ops must be a list"),
        (b'{"v": 1, "ops": [1]}', "ops\\[0\\]: an operation must be an object"),
        (b'{"v": 1, "ops": [{"op": "run"}]}', "'get', 'item' or 'call'"),
        (b'{"v": 1, "ops": [{"op": "get"}]}', "'name' must be a non-empty string"),
        (b'{"v": 1, "ops": [{"op": "get", "name": ""}]}', "non-empty string"),
        (b'{"v": 1, "ops": [{"op": "get", "name": "a", "x": 1}]}', "takes the keys"),
        (b'{"v": 1, "ops": [{"op": "item"}]}', "takes the keys"),
        (b'{"v": 1, "ops": [{"op": "call", "args": {}}]}', "'args' must be a list"),
        (b'{"v": 1, "ops": [{"op": "call", "kwargs": []}]}', "'kwargs' must be an object"),
        (b'{"v": 1, "ops": [{"op": "call", "self": 1}]}', "takes the keys"),
        (b'{"v": 1, "ops": [{"op": "call", "args": {}, "kwargs": {}}]}', "'args' must be a list"),
        (b'{"v": 1, "ops": [{"op": "call", "args": [], "kwargs": []}]}', "'kwargs' must be an"),
        (b'{"v": 1, "ops": [{"op": "call", "args": [], "x": {}}]}', "takes the keys"),
        (b'{"v": 1, "ops": [{"op": "get", "name": "a"}, 7]}', "ops\\[1\\]"),
        (b"[]", "must be a JSON object"),
    ],
)
def test_malformed_chains_raise_chain_validation_errors(data: bytes, message: str) -> None:
    with pytest.raises(ChainValidationError, match=message):
        OperationChain.from_json(data)
    with pytest.raises(ChainValidationError, match=message):
        OperationChain.model_validate_json(data)
    with pytest.raises(ChainValidationError, match=message):
        OperationChain.from_parsed_json(orjson.loads(data))


@settings(max_examples=150)
@given(chains())
def test_from_parsed_json_reads_what_model_validate_reads(chain: OperationChain) -> None:
    tree = orjson.loads(chain.to_json())
    assert equivalent(OperationChain.from_parsed_json(tree), chain)
    assert equivalent(OperationChain.model_validate(tree), chain)


def test_a_chain_field_read_from_json_is_not_scanned_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from operation_chain import _codec

    def refuse(*args: Any) -> bool:
        raise AssertionError("scanned")

    class Holder(BaseModel):
        chain: OperationChain

    monkeypatch.setattr(_codec, "scan", refuse)
    holder = Holder.model_validate_json(b'{"chain": {"v": 1, "ops": [{"op": "get", "name": "a"}]}}')
    assert holder.chain.ops == (GetOp("a"),)


def test_a_nested_chain_error_names_its_place() -> None:
    data = b'{"v":1,"ops":[{"op":"call","args":[{"$chain":[{"op":"get"}]}]}]}'
    with pytest.raises(ChainValidationError, match=r"\$chain.ops\[0\]"):
        OperationChain.from_json(data)


def test_invalid_json_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        OperationChain.from_json(b"{nope")
    with pytest.raises(DecodeError):
        OperationChain.model_validate_json(b"{nope")


def test_oversized_input_is_refused_before_parsing() -> None:
    small = ExecutionPolicy(max_encoded_size=64)
    data = chain_of(OperationProxy().f("x" * 100)).to_json()
    with pytest.raises(ChainLimitError, match=f"{len(data)} > 64"):
        OperationChain.from_json(data, policy=small)
    assert OperationChain.from_json(data) == chain_of(OperationProxy().f("x" * 100))


def test_a_chain_nested_past_the_depth_limit_is_refused() -> None:
    data: Any = []
    text = "[]"
    for _ in range(120):
        data = [{"op": "call", "args": [{"$chain": data}]}]
        text = f'[{{"op": "call", "args": [{{"$chain": {text}}}]}}]'
    with pytest.raises(DecodeError, match="deeper"):
        OperationChain.from_json(f'{{"v": 1, "ops": {text}}}')
    with pytest.raises(DecodeError, match="deeper"):
        OperationChain.model_validate({"v": 1, "ops": data})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.sampled_from(["get", "item", "call", "$chain", "$ref"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["v", "ops", "op", "name", "key", "args", "kwargs", "$chain", "$ref", "x"]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=500)
@given(st.one_of(json_values, st.builds(lambda ops: {"v": 1, "ops": ops}, json_values)))
def test_random_json_raises_only_operation_chain_errors(data: Any) -> None:
    text = orjson.dumps(data)
    for parse in (OperationChain.from_json, OperationChain.model_validate_json):
        try:
            chain = parse(text)
        except OperationChainError:
            continue
        assert isinstance(chain, OperationChain)


# -- rendering ----------------------------------------------------------------------------------


def test_str_renders_readable_python() -> None:
    p = OperationProxy()
    assert str(chain_of(p.combine(p.get("a"), RESULT))) == "combine(get('a'), <result>)"
    assert str(chain_of(p.rooms["lobby"].post("hi", urgent=True))) == (
        "rooms['lobby'].post('hi', urgent=True)"
    )
    assert str(chain_of(p[0].x)) == "[0].x"
    assert str(chain_of(p.use(p))) == "use(<target>)"
    assert repr(chain_of(p.a())) == "OperationChain('a()')"


def test_long_argument_values_are_shortened_in_the_rendering() -> None:
    p = OperationProxy()
    text = str(chain_of(p.store("x" * 500, list(range(100)))))
    assert len(text) < 200
    assert "..." in text


def test_rendering_a_deep_chain_with_shared_arguments_stays_short() -> None:
    p = OperationProxy()
    node = p.leaf()
    for _ in range(40):
        node = p.wrap([node, {"k": node}])  # 2**40 paths if expanded
    text = str(chain_of(node))
    assert text.startswith("wrap([wrap(")
    assert len(text) < 300


def test_rendering_a_chain_that_contains_itself_terminates() -> None:
    p = OperationProxy()
    items: list[Any] = []
    chain = chain_of(p.f(items))
    items.append(chain)
    assert str(chain) == "f([f([f([...])])])"
    assert "..." in repr(chain)


def test_the_shared_get_op_cache_stays_bounded_under_hostile_names() -> None:
    from operation_chain import _chain

    for i in range(_chain.GET_OPS.limit + 100):
        OperationChain.from_json(f'{{"v": 1, "ops": [{{"op": "get", "name": "n{i}"}}]}}')
    assert len(_chain.GET_OPS) <= _chain.GET_OPS.limit
    assert _chain.GET_OPS["n5"] == GetOp("n5")


def test_the_slot_setter_falls_back_to_setattr_for_unknown_slots() -> None:
    from operation_chain._chain import _slot_setter

    class Plain:
        pass

    target = Plain()
    _slot_setter("anything")(target, 3)
    assert target.anything == 3  # type: ignore[attr-defined]


@given(
    st.one_of(
        st.integers(),
        st.integers(min_value=-(10**60), max_value=10**60),
        st.text(max_size=80),
        st.floats(),
        st.booleans(),
        st.none(),
        st.sampled_from([RESULT, ERROR]),
    )
)
def test_scalar_arguments_render_as_reprlib_renders_them(value: object) -> None:
    # Rendering takes a shortcut for scalars; it must agree with the general path.
    from operation_chain._chain import _value_repr, _value_text

    assert _value_text(value, 6) == _value_repr.repr1(value, 6)
