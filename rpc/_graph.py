"""The values reachable from a chain's arguments, and copies of a chain with some replaced.

Pipelining needs both directions: the client replaces a nested chain shared by several calls
with a ``CallRef`` to the one call that computes it, and the server replaces each ``CallRef``
with that call's result. Arguments may share containers or hold cycles (the codec keeps
both), so the copy rebuilds exactly the containers on a path to a replaced value, keeps their
sharing and cycles, and reuses everything else as the same object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import NoneType
from typing import Any, Final

from operation_chain import CallOp, ItemOp, Operation, OperationChain

_SCALARS: Final = frozenset({NoneType, bool, int, float, complex, str, bytes})
_CONTAINERS: Final = frozenset({list, tuple, dict})


def _op_values(ops: Iterable[Operation]) -> list[Any]:
    """The argument values of ``ops``: call arguments (positional, then keyword) and item keys."""
    values: list[Any] = []
    for op in ops:
        if type(op) is CallOp:
            values += op.args
            values += op.kwargs.values()
        elif type(op) is ItemOp:
            values.append(op.key)
    return values


def has_values(chain: OperationChain) -> bool:
    """Whether any argument or item key of ``chain`` is more than a scalar: the quick test
    that lets the common call (``increment(2)``) skip building a ``ValueGraph``."""
    for op in chain.ops:
        if type(op) is CallOp:
            for value in op.args:
                if type(value) not in _SCALARS:
                    return True
            for value in op.kwargs.values():
                if type(value) not in _SCALARS:
                    return True
        elif type(op) is ItemOp and type(op.key) not in _SCALARS:
            return True
    return False


def _children(value: Any) -> list[Any]:
    """What a container or a chain holds that may lead to a replaceable value."""
    if isinstance(value, OperationChain):
        return _op_values(value.ops)
    return list(value.values() if type(value) is dict else value)


class ValueGraph:
    """The nested chains and other values reachable from one chain's arguments.

    Walked once, depth first. Containers (lists, tuples, dicts; dict values only, since a
    replaceable value cannot be a key) and nested chains are descended, except chains for
    which ``stop`` is true, which are recorded but not entered.

    Attributes:
        chains: the nested chains found, each once, in the order met.
        leaves: the other non-scalar values found (not containers), each once.
    """

    __slots__ = ("_objects", "_parents", "_root", "chains", "leaves")

    def __init__(
        self, chain: OperationChain, *, stop: Callable[[OperationChain], bool] | None = None
    ) -> None:
        self._root = chain
        self.chains: list[OperationChain] = []
        self.leaves: list[Any] = []
        self._parents: dict[int, list[int]] = {}
        self._objects: dict[int, Any] = {id(chain): chain}
        pending: list[tuple[int, Any]] = [(id(chain), v) for v in reversed(_op_values(chain.ops))]
        while pending:
            parent, value = pending.pop()
            if type(value) in _SCALARS:
                continue
            key = id(value)
            self._parents.setdefault(key, []).append(parent)
            if key in self._objects:
                continue
            self._objects[key] = value
            if type(value) in _CONTAINERS:
                pending += [(key, v) for v in reversed(_children(value))]
            elif isinstance(value, OperationChain):
                self.chains.append(value)
                if stop is None or not stop(value):
                    pending += [(key, v) for v in reversed(_children(value))]
            else:
                self.leaves.append(value)

    def replace(self, replacements: Mapping[int, Any]) -> OperationChain:
        """A copy of the chain with each value whose ``id`` is a key swapped for its value.

        Only containers and chains on a path to a replaced value are rebuilt; the chain
        itself is returned when nothing in it is replaced.
        """
        affected: set[int] = set()
        frontier = [key for key in replacements if key in self._parents]
        while frontier:
            for parent in self._parents.get(frontier.pop(), ()):
                if parent not in affected:
                    affected.add(parent)
                    frontier.append(parent)
        if id(self._root) not in affected:
            return self._root
        return _Copy(replacements, affected).chain(self._root)


class _Copy:
    """One rebuild: maps each rebuilt object's ``id`` to its copy, so sharing survives."""

    __slots__ = ("affected", "built", "replacements")

    def __init__(self, replacements: Mapping[int, Any], affected: set[int]) -> None:
        self.replacements = replacements
        self.affected = affected
        self.built: dict[int, Any] = {}

    def value(self, value: Any) -> Any:
        key = id(value)
        if key in self.replacements:
            return self.replacements[key]
        if key not in self.affected:
            return value
        if key in self.built:
            return self.built[key]
        kind = type(value)
        if kind is list:
            new_list: list[Any] = []
            self.built[key] = new_list  # before the items, so a cycle finds it
            new_list.extend([self.value(item) for item in value])
            return new_list
        if kind is dict:
            new_dict: dict[Any, Any] = {}
            self.built[key] = new_dict
            for name, item in value.items():
                new_dict[name] = self.value(item)
            return new_dict
        if kind is tuple:
            # A tuple reaches itself only through a list or dict, registered above; if that
            # path already copied this tuple, keep that copy.
            return self.built.setdefault(key, tuple([self.value(item) for item in value]))
        return self.built.setdefault(key, self.chain(value))

    def chain(self, chain: OperationChain) -> OperationChain:
        ops: list[Operation] = []
        for op in chain.ops:
            if type(op) is CallOp:
                args = tuple([self.value(v) for v in op.args])
                kwargs = {name: self.value(v) for name, v in op.kwargs.items()}
                ops.append(CallOp(args, kwargs))
            elif type(op) is ItemOp:
                ops.append(ItemOp(self.value(op.key)))
            else:
                ops.append(op)
        # The ops come from a chain that was valid, so pydantic's validation is skipped.
        return OperationChain.model_construct(ops=tuple(ops))
