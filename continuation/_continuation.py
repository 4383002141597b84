"""``Continuation``: the proxy a handler chain is recorded on, and its check against the class.

A bad chain must fail when ``continue_`` is called, in the turn that made the mistake, not an
hour later when the alarm fires; so the chain is checked against the actor class statically:
the method exists, is public and synchronous, and the recorded arguments bind to it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Final, cast

from operation_chain import (
    ERROR,
    RESULT,
    CallOp,
    GetOp,
    ItemOp,
    Marker,
    OperationChain,
    OperationProxy,
    chain_of,
)

from ._errors import ContinuationChainError


class Continuation(OperationProxy):
    """Records the handler chain of a continuation: ``c.deliver(text, c.result)``.

    ``c.result`` and ``c.error`` are the ``RESULT`` and ``ERROR`` markers, replaced when the
    chain runs by the strategy's value (an ``AlarmInfo`` for alarms) or its exception (a
    ``ContinuationCancelled`` on cancellation). Because of them, an actor method named
    ``result`` or ``error`` cannot be a handler.

    Args:
        target: the actor (``Continuation(self)``) or actor class the chain will run on.
    """

    __slots__ = ("_continuation_class",)

    result = RESULT
    error = ERROR

    _continuation_class: type

    def __init__(self, target: object) -> None:
        super().__init__()
        self._continuation_class = target if isinstance(target, type) else type(target)

    def __repr__(self) -> str:
        return (
            f"Continuation({self._proxy_root._continuation_class.__name__}, {self._chain_text()!r})"
        )

    def _chain_text(self) -> str:
        return str(chain_of(self))


# The slots read through their descriptors: a proxy's own attribute lookup is Python code
# (it records public names), which every continue_ would pay twice per chain.
_root_of: Final = cast(
    "Callable[[OperationProxy], OperationProxy]", OperationProxy.__dict__["_proxy_root"].__get__
)
_class_of: Final = cast(
    "Callable[[Continuation], type]", Continuation.__dict__["_continuation_class"].__get__
)


def continuation_class(proxy: Continuation) -> type:
    """The actor class a continuation proxy was recorded for."""
    root = _root_of(proxy)
    assert isinstance(root, Continuation)
    return _class_of(root)


def check_handler_chain(
    cls: type, chain: OperationChain, *, role: str, synchronous: bool = True
) -> None:
    """Check that ``chain`` starts with a call of a public synchronous method of ``cls`` whose
    signature accepts the recorded arguments; nested chains are checked the same way.

    Operations after the first call act on whatever the method returns, which cannot be
    known statically; the executor's policy checks them when the chain runs.
    """
    ops = chain.ops
    if len(ops) < 2 or not isinstance(ops[0], GetOp) or not isinstance(ops[1], CallOp):
        raise ContinuationChainError(
            f"the {role} {str(chain)!r} must start with a method call, like c.handle(c.result)"
        )
    name, call = ops[0].name, ops[1]
    problem = _binding_problem(cls, name, synchronous, len(call.args), tuple(call.kwargs))
    if problem is not None:
        raise ContinuationChainError(f"{cls.__name__}.{chain!s}: {problem}")
    for nested in _nested_chains(ops):
        check_handler_chain(cls, nested, role=role, synchronous=synchronous)


@functools.lru_cache(maxsize=1024)
def _handler_signature(
    cls: type, name: str, synchronous: bool = True
) -> tuple[inspect.Signature, bool]:
    """The signature of the handler ``cls.name`` and whether it takes ``self``; raises if it
    cannot be a handler. Cached: every ``continue_`` checks its chain, and most of the cost
    of the check is here, while the answer depends on the class alone."""
    where = f"{cls.__name__}.{name}"
    if name.startswith("_"):
        raise ContinuationChainError(f"{where} is private; a handler must be a public method")
    member = inspect.getattr_static(cls, name, None)
    function = member.__func__ if isinstance(member, staticmethod | classmethod) else member
    if not inspect.isfunction(function):
        raise ContinuationChainError(f"{where} is not a method of {cls.__name__}")
    if inspect.isasyncgenfunction(function) or (
        synchronous and inspect.iscoroutinefunction(function)
    ):
        raise ContinuationChainError(
            f"{where} is async; handlers run as synchronous turns so that all their writes "
            "commit together. Make it a plain def, and hand slow work to a strategy that "
            "continues with another handler"
        )
    return inspect.signature(function), not isinstance(member, staticmethod)


@functools.lru_cache(maxsize=4096)
def _binding_problem(
    cls: type, name: str, synchronous: bool, positional: int, keywords: tuple[str, ...]
) -> str | None:
    """Why ``positional`` arguments and ``keywords`` do not bind to the handler, or None.

    Binding looks at how many arguments there are and at their names, never at their
    values; so the answer is cached on those, and a ``continue_`` that repeats a call shape
    (nearly every one) skips ``Signature.bind``."""
    signature, takes_self = _handler_signature(cls, name, synchronous)
    try:
        signature.bind(*range(positional + takes_self), **dict.fromkeys(keywords))
    except TypeError as exc:
        return str(exc)
    return None


def chain_shape(ops: tuple[Any, ...]) -> tuple[object, ...] | None:
    """What ``check_handler_chain`` and the policy's static check read of a flat chain, or
    None for any other.

    A flat chain holds only attribute reads, subscripts and calls whose arguments are
    scalars or markers: both checks then look at its names, the number and names of its
    arguments and which markers it uses, never at the values. So two flat chains of one
    shape get the same verdict from them, and a ``continue_`` that repeats a shape (nearly
    every one) need not check it again. Anything else (nested chains, containers, other
    types, malformed operations) has no shape and is always checked in full.
    """
    parts: list[object] = []
    for op in ops:
        kind = type(op)
        if kind is GetOp:
            if type(op.name) is not str:
                return None
            parts.append(op.name)
        elif kind is CallOp:
            if type(op.args) is not tuple or type(op.kwargs) is not dict:
                return None
            arguments: list[object] = [len(op.args)]
            for value in op.args:
                leaf = _leaf(value)
                if leaf is _NOT_A_LEAF:
                    return None
                arguments.append(leaf)
            for name, value in op.kwargs.items():
                leaf = _leaf(value)
                if type(name) is not str or leaf is _NOT_A_LEAF:
                    return None
                arguments.append((name, leaf))
            parts.append(tuple(arguments))
        elif kind is ItemOp:
            leaf = _leaf(op.key)
            if leaf is _NOT_A_LEAF:
                return None
            parts.append((ItemOp, leaf))
        else:
            return None
    return tuple(parts)


_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
_LEAVES = _SCALARS | {Marker}  # arguments that hold no chain
_NOT_A_LEAF: Any = object()


def _leaf(value: object) -> object:
    """A flat chain's argument as its shape records it: a marker as itself, a scalar as
    None (its value does not matter to the checks), anything else as ``_NOT_A_LEAF``."""
    kind = type(value)
    if kind in _SCALARS:
        return None
    if kind is Marker:
        return value  # one of two singletons
    return _NOT_A_LEAF


def _nested_chains(ops: tuple[Any, ...]) -> Iterator[OperationChain]:
    for op in ops:
        if isinstance(op, CallOp):
            values = (*op.args, *op.kwargs.values())
        elif isinstance(op, ItemOp):
            values = (op.key,)
        else:
            continue
        # Most arguments are scalars and markers, which hold no chain.
        if any(type(value) not in _LEAVES for value in values):
            yield from _chains_in(values)


def _chains_in(values: tuple[Any, ...]) -> Iterator[OperationChain]:
    for value in values:
        if isinstance(value, OperationChain):
            yield value
        elif isinstance(value, list | tuple):
            yield from _chains_in(tuple(value))
        elif isinstance(value, dict):
            yield from _chains_in(tuple(value.values()))
