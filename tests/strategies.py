"""Shared Hypothesis strategies: every type the codec supports, and helpers to compare them.

New codec types join ``values()`` here, so every property test covers them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import strategies as st
from pydantic import BaseModel

from operation_chain import ERROR, RESULT, CallOp, ItemOp, OperationChain, register_type


@register_type(name="tests.Point")
@dataclasses.dataclass
class Point:
    x: Any
    y: Any = None


@register_type(name="tests.Item")
class Item(BaseModel):
    name: str
    qty: int = 0


@register_type(name="tests.Color")
class Color(enum.Enum):
    RED = "red"
    GREEN = 2


ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"]

safe_text = st.text(max_size=12)
any_text = st.text(alphabet=st.characters(codec=None), max_size=12)  # lone surrogates too
ints = st.one_of(st.integers(), st.integers(min_value=-(2**200), max_value=2**200))
floats = st.floats(allow_nan=True, allow_infinity=True)
fixed_offsets = st.integers(-23 * 60, 23 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
timezones = st.one_of(
    st.none(), st.just(dt.UTC), fixed_offsets, st.sampled_from(ZONES).map(ZoneInfo)
)
datetimes = st.builds(
    lambda d, tz, fold: d.replace(tzinfo=tz, fold=fold),
    st.datetimes(),
    timezones,
    st.integers(0, 1),
)
times = st.builds(
    lambda t, tz: t.replace(tzinfo=tz),
    st.times(),
    st.one_of(st.none(), st.just(dt.UTC), fixed_offsets),
)
decimals = st.decimals(allow_nan=False, allow_infinity=True, places=None)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    floats,
    any_text,
    st.binary(max_size=16),
    st.binary(max_size=8).map(bytearray),
    datetimes,
    st.dates(),
    times,
    st.timedeltas(),
    decimals,
    st.uuids(),
    st.sampled_from(Color),
    st.sampled_from([RESULT, ERROR]),
)

hashables = st.recursive(
    st.one_of(
        st.none(), st.booleans(), ints, safe_text, st.binary(max_size=8), st.dates(), st.uuids()
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple), st.frozensets(inner, max_size=3)
    ),
    max_leaves=6,
)
"""Values that can be dict keys and set members."""

# Dict keys that look like the codec's own tags must round-trip unchanged.
tag_like_keys = st.sampled_from(["$ref", "$id", "$bytes", "$dict", "$chain", "$", "$$x", "$pickle"])


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(safe_text, inner, max_size=4),
        st.dictionaries(st.one_of(tag_like_keys, safe_text), inner, max_size=2),
        st.dictionaries(hashables, inner, max_size=3),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=3),
        st.builds(Point, inner, inner),
        st.builds(Item, name=safe_text, qty=st.integers(-5, 5)),
        inner.map(lambda v: ValueError("bad", v)),
        st.builds(KeyError, safe_text),
    )


def values() -> st.SearchStrategy[Any]:
    """Any value the safe codec supports, nested (no sharing; see ``shared_values``)."""
    return st.recursive(scalars, _containers, max_leaves=20)


@st.composite
def shared_values(draw: st.DrawFn) -> Any:
    """A list that holds the same mutable object several times, maybe including itself."""
    inner = draw(st.lists(values(), max_size=3))
    shared = draw(st.sampled_from([inner, {"k": inner}, Point(inner)]))
    outer: list[Any] = [shared, draw(values()), shared]
    if draw(st.booleans()):
        outer.append(outer)  # a cycle
    return outer


class Unsupported:
    """A type the safe codec must refuse."""


def equivalent(a: Any, b: Any, _seen: dict[int, int] | None = None) -> bool:
    """Deep equality that also checks exact types, tzinfo, NaN, exceptions and cycles."""
    seen = {} if _seen is None else _seen
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, Decimal):
        return (a.is_nan() and b.is_nan()) or (a == b and str(a) == str(b))
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and a.tzinfo == b.tzinfo and a.fold == b.fold and str(a) == str(b)
    if isinstance(a, BaseException):
        return equivalent(a.args, b.args, seen)
    if isinstance(a, OperationChain):
        return equivalent(a.ops, b.ops, seen)
    if isinstance(a, CallOp):
        return equivalent(a.args, b.args, seen) and equivalent(a.kwargs, b.kwargs, seen)
    if isinstance(a, ItemOp):
        return equivalent(a.key, b.key, seen)
    if isinstance(a, (list, tuple, dict, set, frozenset, Point, OperationChain)):
        if id(a) in seen:
            return seen[id(a)] == id(b)
        seen[id(a)] = id(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equivalent(x, y, seen) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        if list(a) != list(b) or [type(k) for k in a] != [type(k) for k in b]:
            return False
        return all(equivalent(a[k], b[k], seen) for k in a)
    if isinstance(a, Point):
        return equivalent(a.x, b.x, seen) and equivalent(a.y, b.y, seen)
    return bool(a == b)


def identity_shape(value: Any) -> list[int]:
    """For each mutable object in visit order, the index of its first visit.

    Two values with the same shape share and cycle in the same places.
    """
    first: dict[int, int] = {}
    shape: list[int] = []

    def visit(v: Any) -> None:
        if isinstance(v, (list, dict, set, Point)):
            if id(v) in first:
                shape.append(first[id(v)])
                return
            first[id(v)] = len(first)
            shape.append(-1)
        if isinstance(v, (list, tuple, set, frozenset)):
            for x in v:
                visit(x)
        elif isinstance(v, dict):
            for k, x in v.items():
                visit(k)
                visit(x)
        elif isinstance(v, Point):
            visit(v.x)
            visit(v.y)

    visit(value)
    return shape
