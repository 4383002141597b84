"""The value codec: every supported type, identity, escaping, refusals and hostile input."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import enum
import hashlib
import hmac
import math
import uuid
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from operation_chain import (
    ERROR,
    RESULT,
    Codec,
    CodecError,
    DecodeError,
    OperationChain,
    OperationChainError,
    OperationProxy,
    RemoteError,
    SignatureError,
    UnsupportedTypeError,
    chain_of,
    decode,
    dumps,
    encode,
    loads,
    register_type,
)
from operation_chain._codec import _detached
from operation_chain._decode import Decoder
from operation_chain._encode import Encoder
from tests.operation_chain.chain_strategies import nested_chains
from tests.strategies import (
    Color,
    Item,
    Point,
    equivalent,
    identity_shape,
    shared_values,
    values,
)


def roundtrip(value: Any) -> Any:
    return loads(dumps(value))


# -- properties ---------------------------------------------------------------------------------


@given(values())
def test_dumps_loads_roundtrips_every_supported_type(value: Any) -> None:
    assert equivalent(roundtrip(value), value)


@given(values())
def test_encode_decode_tree_agrees_with_dumps_loads(value: Any) -> None:
    tree = encode(value)
    assert orjson.loads(orjson.dumps(tree)) == tree or tree != tree  # NaN-free trees are JSON
    assert equivalent(decode(tree), value)
    assert equivalent(loads(orjson.dumps(tree)), value)


@given(shared_values())
def test_shared_references_and_cycles_keep_their_identity_structure(value: Any) -> None:
    back = roundtrip(value)
    assert identity_shape(back) == identity_shape(value)
    assert back[0] is back[2]


json_ints = st.integers(-(2**63), 2**64 - 1)


plain_keys = st.text().filter(lambda k: not k.startswith("$"))


@given(st.recursive(json_ints | st.text(), lambda i: st.lists(i) | st.dictionaries(plain_keys, i)))
def test_json_native_values_encode_to_themselves(value: Any) -> None:
    assert encode(value) == value
    assert orjson.loads(dumps(value)) == value


@given(st.one_of(st.builds(object), st.functions(), st.just(type), st.builds(lambda: lambda: 1)))
def test_unsupported_values_are_refused_in_safe_mode(value: Any) -> None:
    with pytest.raises(UnsupportedTypeError):
        dumps(value)
    with pytest.raises(UnsupportedTypeError):
        dumps({"nested": [1, value]})


json_trees = st.recursive(
    st.none() | st.booleans() | json_ints | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=5), inner, max_size=3),
        st.builds(
            lambda tag, body: {tag: body},
            st.sampled_from(
                [
                    "$ref",
                    "$id",
                    "$dict",
                    "$tuple",
                    "$set",
                    "$frozenset",
                    "$bytes",
                    "$str",
                    "$int",
                    "$float",
                    "$datetime",
                    "$date",
                    "$time",
                    "$timedelta",
                    "$decimal",
                    "$uuid",
                    "$enum",
                    "$obj",
                    "$exc",
                    "$pickle",
                    "$marker",
                    "$chain",
                    "$nope",
                    "$bytearray",
                ]
            ),
            inner,
        ),
    ),
    max_leaves=12,
)


@settings(max_examples=400)
@given(json_trees)
def test_hostile_trees_decode_or_raise_only_codec_errors(tree: Any) -> None:
    with contextlib.suppress(OperationChainError):
        decode(tree)
    with contextlib.suppress(OperationChainError):
        loads(orjson.dumps(tree))


@given(st.binary(max_size=64))
def test_random_bytes_load_or_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        loads(data)


# -- scalars ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [2**63, -(2**63) - 1, 2**64, 2**64 - 1, -(2**63), 10**5000, -(10**5000)],
    ids=["2^63", "-2^63-1", "2^64", "2^64-1", "-2^63", "10^5000", "-10^5000"],
)
def test_integers_of_any_size_roundtrip(value: int) -> None:
    assert roundtrip(value) == value
    assert type(roundtrip(value)) is int


def test_huge_integers_are_written_in_hex_to_avoid_the_decimal_digit_limit() -> None:
    assert int(encode(10**5000)["$int"], 16) == 10**5000
    assert encode(-255 * 2**70) == {"$int": "-" + format(255 * 2**70, "x")}


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_infinities_roundtrip(value: float) -> None:
    assert roundtrip(value) == value


def test_nan_and_negative_zero_roundtrip() -> None:
    assert math.isnan(roundtrip(float("nan")))
    assert math.copysign(1, roundtrip(-0.0)) == -1


def test_bool_stays_bool_and_int_stays_int() -> None:
    assert roundtrip([True, 1, False, 0]) == [True, 1, False, 0]
    assert [type(v) for v in roundtrip([True, 1])] == [bool, int]


def test_strings_with_lone_surrogates_roundtrip() -> None:
    text = "a\ud800b\udfff"
    assert roundtrip(text) == text
    assert roundtrip({"k": [text]}) == {"k": [text]}


def test_bytes_and_bytearray_keep_their_types() -> None:
    back = roundtrip([b"\x00\xff", bytearray(b"xy")])
    assert back == [b"\x00\xff", bytearray(b"xy")]
    assert [type(v) for v in back] == [bytes, bytearray]


def test_tuples_sets_and_frozensets_keep_their_types() -> None:
    value = [(1, (2, 3)), {1, 2}, frozenset({"a"})]
    back = roundtrip(value)
    assert back == value
    assert [type(v) for v in back] == [tuple, set, frozenset]


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2024, 1, 2, 3, 4, 5, 6),
        dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        dt.datetime(2024, 7, 1, 12, tzinfo=ZoneInfo("Europe/Paris")),
        dt.datetime(2024, 11, 3, 1, 30, tzinfo=ZoneInfo("America/New_York"), fold=1),
        dt.datetime(2024, 1, 2, fold=1),
        dt.date(2024, 2, 29),
        dt.time(23, 59, 59, 999999),
        dt.time(1, 2, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
        dt.time(1, 2, tzinfo=ZoneInfo("Europe/Paris")),
        dt.timedelta(days=-3, seconds=7, microseconds=9),
    ],
)
def test_dates_and_times_roundtrip_with_their_timezone(value: Any) -> None:
    assert equivalent(roundtrip(value), value)


def test_a_named_zone_keeps_its_key_not_just_its_offset() -> None:
    value = dt.datetime(2024, 1, 1, tzinfo=ZoneInfo("Europe/Paris"))
    back = roundtrip(value)
    assert back.tzinfo == ZoneInfo("Europe/Paris")
    assert back + dt.timedelta(days=180) == value + dt.timedelta(days=180)


def test_a_tzinfo_without_a_portable_name_is_refused() -> None:
    class Odd(dt.tzinfo):
        def utcoffset(self, _: Any) -> dt.timedelta:
            return dt.timedelta(0)

    with pytest.raises(UnsupportedTypeError, match=r"tzinfo Odd"):
        dumps({"when": dt.datetime(2024, 1, 1, tzinfo=Odd())})


@pytest.mark.parametrize("text", ["1.10", "-0", "NaN", "sNaN", "Infinity", "1E+999999"])
def test_decimals_roundtrip_exactly(text: str) -> None:
    assert str(roundtrip(Decimal(text))) == text


def test_uuids_roundtrip() -> None:
    value = uuid.uuid4()
    assert roundtrip(value) == value
    assert type(roundtrip(value)) is uuid.UUID


# -- dicts and escaping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"$ref": 0},
        {"$id": [0, []]},
        {"$bytes": "AA=="},
        {"$dict": []},
        {"$pickle": ["AA==", None]},
        {"$": 1},
        {"$a": 1, "$b": 2},
        [{"$chain": []}],
    ],
)
def test_dicts_whose_keys_look_like_tags_roundtrip_unchanged(value: Any) -> None:
    assert roundtrip(value) == value
    assert decode(encode(value)) == value


def test_dicts_with_any_hashable_keys_roundtrip_in_order() -> None:
    value = {1: "a", (1, "x"): "b", None: "c", frozenset({2}): "d", "s": "e", b"k": "f"}
    back = roundtrip(value)
    assert back == value
    assert list(back) == list(value)


def test_key_order_is_kept() -> None:
    value = {"b": 1, "a": 2, "c": 3}
    assert list(roundtrip(value)) == ["b", "a", "c"]


# -- identity -----------------------------------------------------------------------------------


def test_a_shared_dict_in_otherwise_plain_json_keeps_identity() -> None:
    inner = {"k": 1}
    back = roundtrip([inner, inner])
    assert back[0] is back[1]


def test_a_shared_list_is_one_object_after_decoding() -> None:
    inner = [1]
    back = roundtrip({"a": inner, "b": inner})
    assert back["a"] is back["b"]
    back["a"].append(2)
    assert back["b"] == [1, 2]


def test_a_self_containing_list_and_dict_roundtrip() -> None:
    items: list[Any] = [1]
    items.append(items)
    mapping: dict[str, Any] = {}
    mapping["self"] = mapping
    back_items, back_map = roundtrip([items, mapping])
    assert back_items[1] is back_items
    assert back_map["self"] is back_map


def test_a_cycle_through_a_tuple_resolves_through_the_list() -> None:
    holder: list[Any] = []
    pair = (holder, 1)
    holder.append(pair)
    back = roundtrip(pair)
    assert back[0][0][0] is back[0]


def test_a_cycle_through_a_dataclass_roundtrips() -> None:
    parent = Point("parent", [])
    child = Point("child", parent)
    parent.y.append(child)
    back = roundtrip(parent)
    assert back.y[0].y is back


def test_a_shared_set_and_dataclass_keep_identity() -> None:
    tags = {1, 2}
    point = Point(1, 2)
    back = roundtrip([tags, tags, point, point])
    assert back[0] is back[1]
    assert back[2] is back[3]


def test_a_cycle_through_a_pydantic_model_is_refused_at_encode_time() -> None:
    @register_type(name="tests.Holder")
    class Holder(BaseModel):
        items: list[Any]

    holder = Holder(items=[])
    holder.items.append(holder)
    with pytest.raises(UnsupportedTypeError, match="cycle through a pydantic model"):
        dumps(holder)


def test_the_same_model_twice_without_a_cycle_keeps_identity() -> None:
    item = Item(name="a")
    back = roundtrip([item, item])
    assert back[0] is back[1]
    assert back[0] == item


def test_dumps_keeps_no_buffer_of_the_json_writer() -> None:
    # orjson's 1 KiB buffer shrunk in place, kept by the thousand, slows every later
    # encoding: a result up to 64 KiB is copied into a bytes object of its own size.
    small = orjson.dumps({"$chain": [{"op": "get", "name": "ping"}]})
    assert _detached(small) == small
    assert _detached(small) is not small
    large = orjson.dumps("x" * (1 << 17))
    assert _detached(large) is large
    assert dumps(["ok", 1]) == b'["ok",1]'


# -- registered user types ----------------------------------------------------------------------


def test_registered_dataclass_model_and_enum_roundtrip() -> None:
    value = [Point(1, Color.RED), Item(name="x", qty=3), Color.GREEN]
    back = roundtrip(value)
    assert back == value
    assert back[2] is Color.GREEN


@register_type(name="tests.Call")
@dataclasses.dataclass(frozen=True)
class Call:
    target: str
    attempt: int
    urgent: bool
    note: str | None
    chain: Any = None
    other: Any = None


def general_tree(value: Any) -> Any:
    """What the general encoder writes, bypassing the codec's shortcuts."""
    codec = Codec()
    return codec._run(value, Encoder.enc)


def test_a_plain_registered_dataclass_takes_the_shortcuts_to_the_same_result() -> None:
    p = OperationProxy()
    codec = Codec()
    calls = [
        Call("billing", 2, True, None, chain_of(p.charge(10, "eur"))),
        Call("billing", 0, False, "no chain"),
        Call("ok", -(2**53), False, None, chain_of(p.a.b(RESULT))),
    ]
    for call in calls:
        assert codec.encode(call) == general_tree(call)
        data = dumps(call)
        assert loads(data) == call == Decoder(codec).dec(orjson.loads(data))


@pytest.mark.parametrize(
    "call",
    [
        Call("caf\u00e9", 1, True, None),  # a non-ASCII string
        Call("x", 2**70, True, None),  # an integer past the JSON range
        Call("x", 1, True, None, 1.5),  # a float
        Call("x", 1, True, None, chain_of(OperationProxy().a(1)), chain_of(OperationProxy().b())),
        Call("x", 1, True, None, [1, 2]),  # a container
    ],
)
def test_anything_else_in_a_registered_dataclass_takes_the_general_path(call: Call) -> None:
    assert encode(call) == general_tree(call)
    assert roundtrip(call) == call


@pytest.mark.parametrize(
    "value",
    [
        ("ok", 42),
        ("error", None, True, -(2**53)),
        (),
        ("caf\u00e9", 1),  # the general path from here on
        (1.5, 2),
        (2**70,),
        ([1], {"a": 1}),
        (("nested",),),
    ],
)
def test_a_tuple_encodes_and_decodes_as_the_general_path_does(value: tuple[Any, ...]) -> None:
    codec = Codec()
    assert codec.encode(value) == general_tree(value)
    data = dumps(value)
    assert loads(data) == value == Decoder(codec).dec(orjson.loads(data))


def test_a_stored_record_missing_a_field_or_with_an_unknown_one_is_decoded_generally() -> None:
    base = {"target": "x", "attempt": 1, "urgent": True, "note": None, "chain": None}
    assert decode({"$obj": ["tests.Call", base]}) == Call("x", 1, True, None)  # default other
    with pytest.raises(DecodeError, match="no fields"):
        loads(orjson.dumps({"$obj": ["tests.Call", {**base, "other": 1, "extra": 2}]}))
    with pytest.raises(DecodeError, match="missing the field 'target'"):
        loads(orjson.dumps({"$obj": ["tests.Call", {"attempt": 1}]}))


def test_unregistered_user_types_are_refused_with_advice() -> None:
    @dataclasses.dataclass
    class Loose:
        x: int

    with pytest.raises(UnsupportedTypeError, match="register_type"):
        dumps([Loose(1)])


def test_registering_two_classes_under_one_name_is_refused() -> None:
    @dataclasses.dataclass
    class Other:
        x: int

    with pytest.raises(ValueError, match="already registered"):
        register_type(Other, name="tests.Point")


def test_registering_a_class_under_a_second_name_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered as"):
        register_type(Point, name="tests.Elsewhere")


def test_only_dataclasses_models_enums_and_exceptions_can_be_registered() -> None:
    with pytest.raises(TypeError, match="register_type"):
        register_type(int)


def test_decoding_an_unregistered_name_is_refused() -> None:
    with pytest.raises(DecodeError, match=r"unregistered type 'os\.system'"):
        decode({"$obj": ["os.system", {}]})


def test_a_model_with_invalid_fields_is_refused_on_decode() -> None:
    with pytest.raises(DecodeError, match=r"invalid fields for Item"):
        decode({"$obj": ["tests.Item", {"name": [1, 2]}]})


def test_a_dataclass_with_unknown_or_missing_fields_is_refused_on_decode() -> None:
    with pytest.raises(DecodeError, match="no fields"):
        decode({"$obj": ["tests.Point", {"x": 1, "z": 2}]})
    with pytest.raises(DecodeError, match="missing the field 'x'"):
        decode({"$obj": ["tests.Point", {"y": 1}]})
    assert decode({"$obj": ["tests.Point", {"x": 1}]}) == Point(1, None)


def test_an_unknown_enum_member_is_refused() -> None:
    with pytest.raises(DecodeError, match="no member 'BLUE'"):
        decode({"$enum": ["tests.Color", "BLUE"]})
    with pytest.raises(DecodeError, match="unregistered enum"):
        decode({"$enum": ["tests.Item", "x"]})


def test_a_register_type_decorator_with_a_name() -> None:
    @register_type(name="tests.Weekday")
    class Weekday(enum.IntEnum):
        MON = 1

    assert roundtrip(Weekday.MON) is Weekday.MON
    assert encode(Weekday.MON) == {"$enum": ["tests.Weekday", "MON"]}


# -- exceptions ---------------------------------------------------------------------------------


def test_builtin_exceptions_come_back_as_their_own_type() -> None:
    for exc in (ValueError("bad", 3), KeyError("k"), TimeoutError("slow"), ZeroDivisionError()):
        back = roundtrip(exc)
        assert type(back) is type(exc)
        assert back.args == exc.args


def test_a_raised_exception_carries_its_traceback_as_a_note() -> None:
    try:
        raise ValueError("bad")
    except ValueError as exc:
        back = roundtrip(exc)
    assert any("Remote traceback" in note and "raise ValueError" in note for note in back.__notes__)


def test_tracebacks_can_be_left_out() -> None:
    try:
        raise ValueError("bad")
    except ValueError as exc:
        tree = Codec(tracebacks=False).encode(exc)
    assert tree["$exc"]["traceback"] is None


def test_a_user_exception_comes_back_as_remote_error() -> None:
    class PaymentDeclined(Exception):
        pass

    try:
        raise PaymentDeclined("card expired")
    except PaymentDeclined as exc:
        back = roundtrip(exc)
    assert isinstance(back, RemoteError)
    assert back.type_name.endswith("PaymentDeclined")
    assert back.message == "card expired"
    assert back.remote_traceback is not None
    assert "card expired" in back.remote_traceback
    assert str(back) == f"{back.type_name}: card expired"


def test_a_remote_error_roundtrips_as_itself() -> None:
    original = RemoteError("shop.Declined", "no", "tb text")
    back = roundtrip(original)
    assert isinstance(back, RemoteError)
    assert (back.type_name, back.message, back.remote_traceback) == (
        "shop.Declined",
        "no",
        "tb text",
    )


def test_a_registered_exception_comes_back_as_its_type() -> None:
    @register_type(name="tests.OutOfStock")
    class OutOfStock(Exception):
        pass

    back = roundtrip(OutOfStock("sku-1"))
    assert type(back) is OutOfStock
    assert back.args == ("sku-1",)


def test_an_exception_with_unencodable_args_still_travels_as_remote_error() -> None:
    back = roundtrip(ValueError(object()))
    assert isinstance(back, RemoteError)
    assert back.type_name == "ValueError"
    assert "object object" in back.message


def test_an_exception_whose_constructor_rejects_its_args_becomes_remote_error() -> None:
    @register_type(name="tests.StrictError")
    class StrictError(Exception):
        def __init__(self, code: int) -> None:
            super().__init__(code)

    assert type(roundtrip(StrictError(7))) is StrictError
    back = decode({"$exc": {"type": "tests.StrictError", "args": [1, 2], "message": "m"}})
    assert isinstance(back, RemoteError)
    assert (back.type_name, back.message) == ("tests.StrictError", "m")
    odd = decode({"$exc": {"type": "KeyboardInterrupt", "args": [], "message": "stop"}})
    assert isinstance(odd, RemoteError)
    assert odd.type_name == "KeyboardInterrupt"


# -- markers and chains -------------------------------------------------------------------------


def test_markers_decode_to_the_same_objects() -> None:
    back = roundtrip([RESULT, {"e": ERROR}])
    assert back[0] is RESULT
    assert back[1]["e"] is ERROR


def test_a_chain_inside_a_value_roundtrips() -> None:
    p = OperationProxy()
    chain = chain_of(p.get("a").upper())
    back = roundtrip({"then": chain})
    assert back["then"] == chain
    assert str(back["then"]) == "get('a').upper()"


scalar_arguments = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=4),
    st.binary(max_size=4),
)


@st.composite
def scalar_chains(draw: st.DrawFn) -> OperationChain:
    """Chains of reads, subscripts and calls whose arguments are scalars, nested or not."""
    p = OperationProxy()
    node: Any = p.start
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["get", "item", "call", "nested"]))
        if kind == "get":
            node = node.next
        elif kind == "item":
            node = node[draw(scalar_arguments)]
        elif kind == "call":
            args = draw(st.lists(scalar_arguments, max_size=3))
            node = node(*args, **draw(st.dictionaries(st.sampled_from("abc"), scalar_arguments)))
        else:
            node = node(p.inner(draw(scalar_arguments)), draw(scalar_arguments))
    return chain_of(node)


@given(st.one_of(values(), scalar_chains()))
@example(chain_of(OperationProxy().f(float("inf"), 2**64, "é", b"x", k=math.nan)))
@example(chain_of(OperationProxy()[math.nan]))
@example(7)
@example(-(2**70))
@example("abc")
@example("é")
@example(None)
@example(True)
@example(1.5)
def test_the_encoding_shortcuts_write_what_the_full_walk_writes(value: Any) -> None:
    from operation_chain._codec import SAFE_CODEC, encode_chain
    from operation_chain._encode import Encoder

    assert encode(value) == SAFE_CODEC._run(value, Encoder.enc)
    if isinstance(value, OperationChain):
        assert encode_chain(value)["ops"] == SAFE_CODEC._run(value, Encoder.ops)


def _outcome(encode_value: Any, value: Any) -> Any:
    """What encoding gives: the tree, or the type and message of the error raised."""
    try:
        return encode_value(value)
    except Exception as exc:
        return type(exc), str(exc)


@settings(max_examples=200)
@given(nested_chains(), st.sampled_from([1, 2, 3, 5, 100]))
def test_the_nested_chain_shortcut_writes_what_the_full_walk_writes(
    chain: OperationChain, max_depth: int
) -> None:
    # Pipelined calls nest a chain per call; the shortcut must give way to the full walk for
    # a chain used twice ($id/$ref), a value that is not its own encoding, or nesting past
    # max_depth (refused with a path), and write the same tree otherwise.
    from operation_chain._codec import encode_chain
    from operation_chain._encode import Encoder

    codec = Codec(max_depth=max_depth)
    assert _outcome(codec.encode, chain) == _outcome(lambda v: codec._run(v, Encoder.enc), chain)
    assert _outcome(lambda c: encode_chain(c, codec)["ops"], chain) == _outcome(
        lambda c: codec._run(c, Encoder.ops), chain
    )


_flat_arguments = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
    st.sampled_from([RESULT, ERROR]),
)


@st.composite
def _flat_calls(draw: st.DrawFn) -> OperationChain:
    p = OperationProxy()
    method = getattr(p, draw(st.sampled_from(["f", "g", "handle"])))
    return chain_of(method(*draw(st.lists(_flat_arguments, max_size=4))))


def _shape(value: Any) -> Any:
    """A chain's operations with each argument's type: equality alone has 1 == True."""
    if isinstance(value, OperationChain):
        return [
            (type(op), *(_shape(getattr(op, f.name)) for f in dataclasses.fields(op)))
            for op in value.ops
        ]
    if isinstance(value, tuple | list):
        return [_shape(v) for v in value]
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return (float, "nan")
    return (type(value), value)


@settings(max_examples=300)
@given(st.one_of(_flat_calls(), nested_chains()))
def test_the_flat_chain_shortcut_decodes_what_the_decoder_decodes(chain: OperationChain) -> None:
    # Stored handler chains are mostly one call with scalar and marker arguments; loads
    # builds those directly, and must build exactly what the decoder builds, or leave it.
    from operation_chain._decode import Decoder, flat_chain

    tree = orjson.loads(dumps(chain))
    fast = flat_chain(tree["$chain"])
    general = Decoder(Codec()).dec(tree)
    if fast is not None:
        assert _shape(fast) == _shape(general)
    assert _shape(loads(dumps(chain))) == _shape(general)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=3),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["op", "name", "args", "kwargs", "$marker"]), inner, max_size=3
            )
        ),
        max_leaves=12,
    )
)
def test_the_flat_chain_shortcut_leaves_anything_else_to_the_decoder(ops: Any) -> None:
    from operation_chain._decode import flat_chain

    chain = flat_chain(ops)  # never raises: malformed input is the decoder's to refuse
    if chain is not None:
        assert _shape(Codec().decode({"$chain": ops})) == _shape(chain)


def test_a_chain_nested_deeper_than_the_stack_is_a_codec_error() -> None:
    p = OperationProxy()
    value = p.start()
    for _ in range(3000):
        value = p.step(value)
    roomy = Codec(max_depth=100_000)
    with pytest.raises(CodecError, match="too deeply"):
        roomy.encode(chain_of(value))
    with pytest.raises(UnsupportedTypeError, match="deeper than 100"):
        encode(chain_of(value))


def test_a_proxy_inside_a_set_is_refused_with_advice() -> None:
    with pytest.raises(UnsupportedTypeError, match="chain_of"):
        dumps((OperationProxy(),))


# -- unsupported values and their paths ---------------------------------------------------------


def test_unsupported_type_error_names_the_type_and_the_path() -> None:
    with pytest.raises(UnsupportedTypeError) as info:
        dumps({"args": [1, {"when": object()}]})
    assert info.value.type_name == "object"
    assert info.value.path == "$.args[1].when"
    assert "object at $.args[1].when" in str(info.value)


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ([[object()]], "$[0][0]"),
        ((1, object()), "$[1]"),
        ({"odd key": object()}, "$['odd key']"),
        ({3: object()}, "$[3]"),
        (Point(1, object()), "$.y"),
        (object(), "$"),
    ],
)
def test_paths_for_every_container(value: Any, path: str) -> None:
    with pytest.raises(UnsupportedTypeError) as info:
        encode(value)
    assert info.value.path == path


def test_unsupported_type_error_survives_pickling() -> None:
    import pickle

    err = UnsupportedTypeError("object", "$.x")
    back = pickle.loads(pickle.dumps(err))
    assert (back.type_name, back.path) == ("object", "$.x")


def test_values_nested_past_the_depth_limit_are_refused() -> None:
    deep: Any = 1
    for _ in range(150):
        deep = [deep]
    with pytest.raises(UnsupportedTypeError, match="deeper than 100"):
        dumps(deep)
    assert Codec(max_depth=200).decode(Codec(max_depth=200).encode(deep)) == deep


def test_encoded_data_nested_past_the_depth_limit_is_refused() -> None:
    deep: Any = {"$tuple": [1]}
    for _ in range(150):
        deep = {"$tuple": [deep]}
    with pytest.raises(DecodeError, match="deeper than 100"):
        decode(deep)
    with pytest.raises(DecodeError):
        decode([[[[1]]]] if False else _nest_lists(150))


def _nest_lists(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value, {"$tuple": []}]
    return value


def test_a_value_too_deep_for_the_json_writer_is_a_codec_error() -> None:
    deep: Any = 1
    for _ in range(95):
        deep = {(1,): deep}  # three JSON levels per dict with a tuple key
    with pytest.raises(CodecError, match="cannot be written as JSON"):
        dumps(deep)


# -- malformed input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"$nope": 1}, "unknown tag '\\$nope'"),
        ({"$ref": 3}, "names no earlier \\$id"),
        ({"$ref": "x"}, "must be a int"),
        ({"$id": [0]}, "takes \\[number, value\\]"),
        ([{"$id": [0, []]}, {"$id": [0, []]}], "appears twice"),
        ({"$id": [0, {"$tuple": [{"$ref": 0}]}]}, "cannot hold a cycle"),
        ({"$dict": [[1]]}, "pairs"),
        ({"$dict": {"a": 1}}, "pairs"),
        ({"$dict": [[[1], 2]]}, "unhashable"),
        ({"$tuple": "ab"}, "takes a list"),
        ({"$set": [[1]]}, "malformed \\$set"),
        ({"$bytes": "***"}, "malformed \\$bytes"),
        ({"$bytes": 5}, "must be a str"),
        ({"$int": "12g"}, "hexadecimal"),
        ({"$int": ""}, "hexadecimal"),
        ({"$float": "1.5"}, "'nan', 'inf' or '-inf'"),
        ({"$datetime": "yesterday"}, "malformed \\$datetime"),
        ({"$datetime": ["2024-01-01T00:00:00", "Not/AZone", 0]}, "malformed \\$datetime"),
        ({"$datetime": ["2024-01-01T00:00:00", None, 2]}, "fold"),
        ({"$datetime": [1, 2]}, "zoned time"),
        ({"$timedelta": [1, 2]}, "days, seconds"),
        ({"$decimal": "one"}, "invalid \\$decimal"),
        ({"$uuid": "not-a-uuid"}, "malformed \\$uuid"),
        ({"$obj": "x"}, "type name, fields"),
        ({"$obj": ["tests.Point", [1]]}, "must be an object"),
        ({"$enum": "x"}, "type name, member name"),
        ({"$exc": "x"}, "takes an object"),
        ({"$exc": {"type": 1}}, "\\$exc type"),
        ({"$exc": {"type": "ValueError", "traceback": 5}}, "\\$exc traceback"),
        ({"$marker": "later"}, "'result' or 'error'"),
        ({"$chain": "x"}, "ops must be a list"),
        ({"$str": "@@"}, "malformed \\$str"),
    ],
)
def test_malformed_tags_raise_decode_errors_that_say_what_was_wrong(
    tree: Any, message: str
) -> None:
    with pytest.raises(OperationChainError, match=message):
        decode(tree)


@pytest.mark.parametrize("tree", [b"bytes", {"a": object()}, [1, {2: 3}], {1: "a"}, (1, 2)])
def test_decode_refuses_non_json_python_objects(tree: Any) -> None:
    with pytest.raises(DecodeError):
        decode(tree)


@pytest.mark.parametrize("data", [b"{", b"", b"\xff", "[1,", b"NaN"])
def test_loads_refuses_invalid_json(data: Any) -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        loads(data)


def test_loads_refuses_a_non_text_input() -> None:
    with pytest.raises(DecodeError, match="bytes or str"):
        loads(123)  # type: ignore[arg-type]


def test_loads_reads_tags_written_with_whitespace_or_escapes() -> None:
    assert loads('{ "$bytes" : "AA==" }') == b"\x00"
    assert loads('{"\\u0024bytes": "AA=="}') == b"\x00"
    assert loads(bytearray(b'{"$tuple": [1]}')) == (1,)
    assert loads(memoryview(b'{"$tuple": [1]}')) == (1,)


# -- trusted mode -------------------------------------------------------------------------------


class Opaque:
    def __init__(self, value: int) -> None:
        self.value = value


def test_trusted_mode_falls_back_to_cloudpickle() -> None:
    codec = Codec(trusted=True)
    back = codec.loads(codec.dumps({"obj": Opaque(3), "fn": lambda x: x + 1}))
    assert back["obj"].value == 3
    assert back["fn"](1) == 2


def test_a_signed_blob_roundtrips_and_a_tampered_one_is_refused() -> None:
    codec = Codec(trusted=True, signing_key=b"secret")
    tree = codec.encode(Opaque(4))
    assert codec.decode(tree).value == 4
    blob = base64.b64decode(tree["$pickle"][0])
    forged = blob.replace(b"value", b"valuf")
    tree["$pickle"][0] = base64.b64encode(forged).decode()
    with pytest.raises(SignatureError, match="HMAC"):
        codec.decode(tree)


def test_a_blob_signed_with_another_key_is_refused() -> None:
    data = Codec(trusted=True, signing_key=b"one").dumps(Opaque(1))
    with pytest.raises(SignatureError):
        Codec(trusted=True, signing_key=b"two").loads(data)


def test_an_unsigned_blob_is_refused_when_a_key_is_configured() -> None:
    data = Codec(trusted=True).dumps(Opaque(1))
    with pytest.raises(SignatureError):
        Codec(trusted=True, signing_key=b"key").loads(data)


def test_a_signed_blob_is_refused_by_a_trusted_codec_without_a_key() -> None:
    data = Codec(trusted=True, signing_key=b"key").dumps(Opaque(1))
    with pytest.raises(SignatureError, match="no signing key"):
        Codec(trusted=True).loads(data)


def test_safe_mode_never_decodes_pickle_even_when_correctly_signed() -> None:
    import pickle

    blob = pickle.dumps(Opaque(1))
    signature = hmac.new(b"key", blob, hashlib.sha256).hexdigest()
    tree = {"$pickle": [base64.b64encode(blob).decode(), signature]}
    with pytest.raises(SignatureError, match="only a trusted codec"):
        decode(tree)
    with pytest.raises(SignatureError):
        loads(orjson.dumps([1, tree]))


def test_an_unpicklable_value_is_refused_even_in_trusted_mode() -> None:
    import threading

    with pytest.raises(UnsupportedTypeError, match="cloudpickle failed"):
        Codec(trusted=True).dumps(threading.Lock())


def test_codec_options_are_validated() -> None:
    with pytest.raises(ValueError, match="trusted mode only"):
        Codec(signing_key=b"k")
    with pytest.raises(ValueError, match="non-empty bytes"):
        Codec(trusted=True, signing_key=b"")
    with pytest.raises(ValueError, match="at least 1"):
        Codec(max_depth=0)
    assert repr(Codec(trusted=True, signing_key=b"k")) == "Codec(trusted, signed)"
    assert repr(Codec()) == "Codec(safe)"


# -- remaining paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [{"a": 2**70}, [2**70], {"a": float("nan")}, [float("-inf")], {"a": [b"x"]}, [[(1,)]]],
)
def test_values_that_look_json_native_but_are_not_take_the_full_path(value: Any) -> None:
    assert equivalent(roundtrip(value), value)


def test_a_shared_dict_with_non_string_keys_keeps_identity_and_cycles() -> None:
    table: dict[Any, Any] = {1: "one"}
    table[2] = table
    back = roundtrip([table, table])
    assert back[0] is back[1]
    assert back[0][2] is back[0]


def test_a_shared_nested_chain_is_one_object_after_decoding() -> None:
    p = OperationProxy()
    x = chain_of(p.load())
    back = roundtrip({"a": x, "b": [x]})
    assert back["a"] is back["b"][0]
    assert back["a"] == x


def test_unsupported_values_in_chain_keys_and_kwargs_name_their_place() -> None:
    p = OperationProxy()
    with pytest.raises(UnsupportedTypeError) as info:
        dumps(chain_of(p[object()]))
    assert info.value.path == "$.ops[0].key"
    with pytest.raises(UnsupportedTypeError) as info:
        chain_of(p.f(1, when=object())).to_json()
    assert info.value.path == "$.ops[1].kwargs.when"
    with pytest.raises(UnsupportedTypeError) as info:
        chain_of(p.f(1, [object()])).to_json()
    assert info.value.path == "$.ops[1].args[1][0]"


def test_an_operation_of_an_unknown_type_is_refused() -> None:
    with pytest.raises(UnsupportedTypeError, match="not an operation"):
        dumps(OperationChain._build(("get",)))  # type: ignore[arg-type]


def test_values_deeper_than_the_interpreter_stack_are_codec_errors() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    roomy = Codec(max_depth=100_000)
    with pytest.raises(CodecError, match="too deeply"):
        roomy.encode(deep)
    with pytest.raises(DecodeError, match="too deeply"):
        roomy.decode(deep)
    with pytest.raises(DecodeError, match="too deeply"):
        roomy.decode([deep, {"$tuple": []}])
    with pytest.raises(DecodeError, match="not valid JSON"):
        roomy.loads("[" * 5000 + "]" * 5000)  # past the JSON parser's own limit


def test_a_decoded_chain_deeper_than_the_stack_is_a_decode_error() -> None:
    from operation_chain._codec import decode_chain

    ops: Any = []
    for _ in range(3000):
        ops = [{"op": "call", "args": [{"$chain": ops}]}]
    with pytest.raises(DecodeError, match="too deeply"):
        decode_chain({"v": 1, "ops": ops}, codec=Codec(max_depth=100_000))


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ([b"raw"], "holds a bytes"),
        ({"$obj": ["tests.Color", {}]}, "cannot rebuild"),
        ({"$id": [0, {"$obj": ["tests.Color", {}]}]}, "cannot rebuild"),
    ],
)
def test_more_malformed_trees_are_refused(tree: Any, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(tree)


def test_a_missing_dataclass_field_takes_its_default_factory() -> None:
    @register_type(name="tests.Basket")
    @dataclasses.dataclass
    class Basket:
        items: list[str] = dataclasses.field(default_factory=list)

    back = decode({"$obj": ["tests.Basket", {}]})
    assert back == Basket()
    assert back.items is not decode({"$obj": ["tests.Basket", {}]}).items


def test_a_malformed_pickle_body_is_refused_by_a_trusted_codec() -> None:
    with pytest.raises(DecodeError, match="base64 data, signature"):
        Codec(trusted=True).decode({"$pickle": "AA=="})


def test_register_type_as_a_plain_call_uses_the_qualified_name() -> None:
    @dataclasses.dataclass
    class Plain:
        x: int

    assert register_type(Plain) is Plain
    assert encode(Plain(1))["$obj"][0].endswith("Plain")


def test_register_type_refuses_bad_names_and_non_classes() -> None:
    @dataclasses.dataclass
    class Named:
        x: int

    with pytest.raises(ValueError, match="non-empty string"):
        register_type(Named, name="")
    with pytest.raises(TypeError):
        register_type(5)  # type: ignore[call-overload]


def test_plain_json_with_floats_is_written_as_plain_json() -> None:
    value = {"x": 1.5, "y": [2.5, -0.25]}
    assert dumps(value) == b'{"x":1.5,"y":[2.5,-0.25]}'
    assert loads(dumps(value)) == value


def test_json_that_the_parser_accepts_but_the_stack_cannot_decode_is_a_decode_error() -> None:
    text = "[" * 1000 + '{"$tuple":[]}' + "]" * 1000  # within the parser's 1024 levels
    with pytest.raises(DecodeError, match="too deeply"):
        Codec(max_depth=100_000).loads(text)
    with pytest.raises(DecodeError, match="deeper than 100"):
        loads(text)
