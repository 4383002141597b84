"""The quick readers of call frames and batches agree with the pydantic envelopes.

``read_call_frame`` and ``read_calls`` read the common shape by hand; whatever they decline
goes to the pydantic models. So each may decline anything, but what it accepts, the models
must accept too, with the same values.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_core import from_json

from rpc._messages import (
    CLIENT_FRAME,
    Batch,
    CallFrame,
    calls_of,
    parse_json,
    read_call_frame,
    read_calls,
)

CHAIN = {"v": 1, "ops": [{"op": "get", "name": "ping"}, {"op": "call", "args": [], "kwargs": {}}]}
FRAME = {
    "type": "call",
    "id": 7,
    "binding": "counter",
    "instance": "a",
    "batch": {"v": 1, "calls": [{"id": 0, "chain": CHAIN}, {"id": 1, "chain": {}, "reply": False}]},
}

odd_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2**54),
    st.sampled_from([1.0, 0.5, 2**53, 2**53 + 1, -1]),
    st.text(max_size=3),
    st.sampled_from(["call", "subscribe", "", "x" * 201, "x" * 1025]),
    st.lists(st.integers(-9, 9), max_size=2),
    st.dictionaries(st.sampled_from(["id", "chain", "v"]), st.integers(-9, 9), max_size=2),
)
paths = st.sampled_from(
    [
        ("type",),
        ("id",),
        ("binding",),
        ("instance",),
        ("batch",),
        ("extra",),
        ("batch", "v"),
        ("batch", "calls"),
        ("batch", "extra"),
        ("batch", "calls", 0),
        ("batch", "calls", 0, "id"),
        ("batch", "calls", 0, "chain"),
        ("batch", "calls", 0, "reply"),
        ("batch", "calls", 0, "key"),
        ("batch", "calls", 1, "extra"),
    ]
)


def mutated(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    frame: dict[str, Any] = orjson.loads(orjson.dumps(FRAME))
    node: Any = frame
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return frame


def pydantic_reading(data: bytes) -> Any:
    try:
        frame = CLIENT_FRAME.validate_json(data)
    except ValidationError:
        return "refused"
    if not isinstance(frame, CallFrame):
        return "not a call"
    return frame.id, frame.binding, frame.instance, calls_of(frame.batch)


@given(paths, odd_values)
def test_what_the_quick_reader_accepts_pydantic_accepts_alike(
    path: tuple[Any, ...], value: Any
) -> None:
    data = orjson.dumps(mutated(path, value))
    quick = read_call_frame(from_json(data))
    if quick is not None:
        assert quick == pydantic_reading(data)
    batch = from_json(data)["batch"] if path[0] == "batch" else None
    if batch is not None and read_calls(batch) is not None:
        assert read_calls(batch) == calls_of(Batch.model_validate(batch))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("type",), "subscribe"),
        (("id",), -1),
        (("id",), 2**53 + 1),
        (("id",), True),
        (("binding",), ""),
        (("instance",), "x" * 1025),
        (("batch",), []),
        (("batch", "v"), 2),
        (("batch", "calls"), []),
        (("batch", "calls", 0), "call"),
        (("batch", "calls", 0, "reply"), 1),
        (("batch", "calls", 0, "key"), ""),
        (("batch", "calls", 0, "key"), 7),
        (("batch", "calls", 1, "extra"), 1),
    ],
)
def test_the_quick_reader_declines_what_it_does_not_know(path: tuple[Any, ...], value: Any) -> None:
    assert read_call_frame(mutated(path, value)) is None


def test_the_quick_reader_reads_the_common_shape() -> None:
    assert read_call_frame(FRAME) == (
        7, "counter", "a", [(0, CHAIN, True, None), (1, {}, False, None)]
    )  # fmt: skip
    keyed = mutated(("batch", "calls", 0, "key"), "cid-1")
    assert read_call_frame(keyed) == (
        7, "counter", "a", [(0, CHAIN, True, "cid-1"), (1, {}, False, None)]
    )  # fmt: skip


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": [18446744073709551616, -9223372036854775809]}',
        '{"a": [123456789012345678901234, 1.5, "19 digits: 1234567890123456789"]}',
        b'{"a": [1, 2.5, "x"]}',
    ],
)
def test_parse_json_keeps_every_integer_exact(text: str | bytes) -> None:
    assert parse_json(text) == from_json(text)
    assert [type(v) for v in parse_json(text)["a"]] == [type(v) for v in from_json(text)["a"]]


def test_parse_json_refuses_what_is_not_json() -> None:
    with pytest.raises(ValueError, match="expected a string key"):
        parse_json(b"{not json")
    with pytest.raises(ValueError, match="expected `,` or `}`"):  # pydantic's parser
        parse_json(b'{"a": 12345678901234567890123 x}')
