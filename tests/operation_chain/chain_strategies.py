"""Hypothesis strategies for recorded chains whose arguments nest other chains.

They exercise the shortcuts that pipelined calls take (recording, encoding, decoding and
running nested chains passed directly) together with what makes those shortcuts give way to
the general path: a chain used twice, markers, containers, keyword arguments, item keys and
values that are not their own encoding.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from operation_chain import ERROR, RESULT, OperationChain, OperationProxy, chain_of

# Values that encode to themselves, and some that do not (tagged: nan, big ints, non-ASCII).
plain_arguments = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet="abc_xyz", max_size=4),
)
tagged_arguments = st.one_of(
    st.just(float("nan")),
    st.just(2**70),
    st.just("é"),
    st.binary(max_size=2),
)

LEAVES = ["plain", "plain", "plain", "marker", "tagged"]
BRANCHES = ["chain", "chain", "chain", "shared", "list", "dict"]


@st.composite
def nested_chains(draw: st.DrawFn, depth: int = 4, markers: bool = True) -> OperationChain:
    """``p.f(...)`` calls whose arguments (positional, keyword, item keys) are scalars, markers,
    other calls of the same proxy (new, or one made before: shared), lists and dicts."""
    p = OperationProxy()
    made: list[OperationProxy] = []

    def argument(level: int) -> Any:
        kinds = LEAVES + (BRANCHES if level else [])
        kind = draw(st.sampled_from(kinds if markers else [k for k in kinds if k != "marker"]))
        if kind == "plain":
            return draw(plain_arguments)
        if kind == "tagged":
            return draw(tagged_arguments)
        if kind == "marker":
            return draw(st.sampled_from([RESULT, ERROR]))
        if kind == "shared" and made:
            return draw(st.sampled_from(made))
        if kind == "list":
            return [argument(level - 1) for _ in range(draw(st.integers(0, 2)))]
        if kind == "dict":
            return {"k": argument(level - 1)}
        made.append(call(level - 1))
        return made[-1]

    def call(level: int) -> OperationProxy:
        node = getattr(p, draw(st.sampled_from(["f", "g"])))
        args = [argument(level) for _ in range(draw(st.integers(0, 3)))]
        names = draw(st.lists(st.sampled_from(["a", "b"]), unique=True, max_size=2))
        node = node(*args, **{name: argument(level) for name in names})
        if draw(st.integers(0, 4)) == 0:
            node = node[argument(level)]
        return node

    return chain_of(call(depth))
