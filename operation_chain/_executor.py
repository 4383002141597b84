"""Run an operation chain against a target, synchronously or asynchronously.

The policy checks the whole chain first, so a refusal means no part of it ran. Operations
then run left to right from the target. Just before a call (or a subscription), its
arguments are resolved:

- nested chains run against the same root target, in argument order and depth first; a
  chain object runs once per execution, and every place that uses it receives the same
  result object, as a Python variable would;
- ``RESULT``/``ERROR`` markers take their injected values;
- lists, tuples and dicts (values, not keys) are searched for both; one that holds neither is
  passed through as the same object, and one that does is rebuilt as a new list, tuple or
  dict (shared and cyclic containers keep their shape).

Exceptions raised by the target, and Python's own ``AttributeError``/``TypeError`` from the
attribute reads and calls, propagate unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Coroutine, Iterable, Iterator, Mapping, Set
from types import (
    BuiltinFunctionType,
    FunctionType,
    GeneratorType,
    MappingProxyType,
    MethodType,
)
from typing import Any, Final

from ._chain import CallOp, GetOp, ItemOp, OperationChain, render
from ._errors import AwaitableResultError, ChainValidationError
from ._markers import Marker
from ._policy import DEFAULT_POLICY, SCALAR_TYPES, ExecutionPolicy, marker_not_injected

_INJECT_KEYS: Final = frozenset({"result", "error"})
_NOTHING_INJECTED: Final[Mapping[str, Any]] = MappingProxyType({})
_NO_KEYS: Final[Set[str]] = frozenset()
_RESOLVED_TYPES: Final = (Marker, OperationChain)

# Exact types whose instances are never awaitable: most operation values, checked in one
# set lookup instead of ``inspect.isawaitable`` (several isinstance checks, one of an ABC).
_NEVER_AWAITABLE: Final = SCALAR_TYPES | {
    list,
    tuple,
    dict,
    set,
    frozenset,
    FunctionType,
    MethodType,
    BuiltinFunctionType,
}


def execute_operation_chain(
    target: Any,
    chain: OperationChain,
    *,
    inject: Mapping[str, Any] | None = None,
    policy: ExecutionPolicy | None = None,
) -> Any:
    """Run ``chain`` against ``target`` synchronously and return the last operation's value.

    Continuation handlers run inside a turn and must be synchronous, so an awaitable value
    (after any operation, nested chains included) is refused rather than silently dropped;
    a coroutine is closed first, so its body never runs.

    Args:
        target: the object the chain (and every nested chain) starts from.
        chain: the recorded chain.
        inject: values for the markers: ``{"result": value}``, ``{"error": exc}`` or both.
        policy: the rules to enforce; ``None`` means ``DEFAULT_POLICY``.

    Raises:
        TypeError: ``chain`` is not an ``OperationChain``.
        ChainValidationError: ``inject`` has a key other than ``"result"``/``"error"``, or
            the chain is malformed.
        ChainSecurityError: the policy refused the chain (``ChainLimitError`` for limits);
            refusals by the static check mean nothing ran.
        MarkerNotInjectedError: the chain uses a marker that ``inject`` has no value for;
            nothing ran.
        AwaitableResultError: an operation produced an awaitable.
    """
    return _SyncRun(target, chain, inject, policy).run(chain)


async def execute_operation_chain_async(
    target: Any,
    chain: OperationChain,
    *,
    inject: Mapping[str, Any] | None = None,
    policy: ExecutionPolicy | None = None,
) -> Any:
    """Run ``chain`` against ``target``, awaiting every awaitable value along the way.

    RPC methods may be coroutine functions: whenever an operation's value is awaitable (a
    call of an ``async def`` method, or an attribute holding an awaitable), it is awaited
    before the next operation, so ``p.room("a").post(msg)`` works when ``room`` is async.
    Nested chains are executed (and awaited) the same way. Arguments and errors are as for
    ``execute_operation_chain``.
    """
    return await _AsyncRun(target, chain, inject, policy).run(chain)


class _Run:
    """The state of one top-level execution, shared by all its nested chains."""

    __slots__ = ("check_call", "check_get", "inject", "results", "target")

    def __init__(
        self,
        target: Any,
        chain: OperationChain,
        inject: Mapping[str, Any] | None,
        policy: ExecutionPolicy | None,
    ) -> None:
        if type(chain) is not OperationChain and not isinstance(chain, OperationChain):
            raise TypeError(
                f"expected an OperationChain, not {type(chain).__name__}"
                " (chain_of(proxy) gives the chain a proxy recorded)"
            )
        if inject is None:
            self.inject, injected = _NOTHING_INJECTED, _NO_KEYS
        else:
            self.inject = _checked_inject(inject)
            injected = self.inject.keys()
        if policy is None:
            policy = DEFAULT_POLICY
        elif type(policy) is not ExecutionPolicy and not isinstance(policy, ExecutionPolicy):
            raise TypeError(f"policy must be an ExecutionPolicy, not {type(policy).__name__}")
        policy.check(chain, target, injected=injected)
        # Bound once: method lookups on a pydantic model cost more than the checks.
        self.check_get = policy.check_get
        self.check_call = policy.check_call
        self.target = target
        # Results of nested chains by id; the chain is kept with its result so that its id
        # cannot be reused by another object while this execution lasts.
        self.results: dict[int, tuple[OperationChain, Any]] = {}

    def call_resolved(self, callee: Any, op: CallOp) -> Any:
        """Call ``callee`` with the resolved arguments of ``op``, whose nested chains ran."""
        # Checked before the arguments resolve, so a refused call runs none of its nested chains.
        self.check_call(callee)
        built: dict[int, Any] = {}
        args = [self.resolve(value, built) for value in op.args]
        kwargs = {name: self.resolve(value, built) for name, value in op.kwargs.items()}
        return callee(*args, **kwargs)

    def resolve(self, value: Any, built: dict[int, Any]) -> Any:
        """The value an argument stands for, once the nested chains in it have run.

        ``built`` maps each container already resolved in this call (by id) to its
        replacement, so shared and cyclic containers keep their shape.
        """
        kind = type(value)
        if kind in SCALAR_TYPES:
            return value
        if kind is Marker:  # c.result in a handler: every continuation has one
            return self._injected(value)
        if kind is list or kind is tuple or kind is dict:
            return self._container(value, built)
        if isinstance(value, Marker):
            return self._injected(value)
        if isinstance(value, OperationChain):
            return self.result_of(value)
        return value

    def result_of(self, chain: OperationChain) -> Any:
        """The result of a nested chain, which has run (the async executor runs them first)."""
        return self.results[id(chain)][1]

    def _container(self, value: Any, built: dict[int, Any]) -> Any:
        key = id(value)
        if key in built:
            return built[key]
        kind = type(value)
        if not _has_dynamic(value.values() if kind is dict else value):
            built[key] = value
            return value
        if kind is list:
            new_list: list[Any] = []
            built[key] = new_list
            new_list.extend([self.resolve(item, built) for item in value])
            return new_list
        if kind is dict:
            new_dict: dict[Any, Any] = {}
            built[key] = new_dict
            for name, item in value.items():
                new_dict[name] = self.resolve(item, built)
            return new_dict
        # A tuple cannot hold itself except through a list or dict, which registered their
        # replacement above; if that path already rebuilt this tuple, reuse that copy.
        return built.setdefault(key, tuple([self.resolve(item, built) for item in value]))

    def _injected(self, marker: Marker) -> Any:
        try:
            return self.inject[marker.name]
        except KeyError:
            # The static check refuses this first; a custom policy might not.
            raise marker_not_injected(marker) from None


class _SyncRun(_Run):
    __slots__ = ()

    def run(self, chain: OperationChain) -> Any:
        """Run ``chain`` from the root target, refusing any awaitable value."""
        value, check_get, check_call = self.target, self.check_get, self.check_call
        for index, op in enumerate(chain.ops):
            if type(op) is GetOp:
                check_get(value, op.name)
                value = getattr(value, op.name)
            elif type(op) is CallOp:
                if _call_is_dynamic(op):
                    value = self.call_resolved(value, op)
                else:
                    check_call(value)
                    value = value(*op.args, **op.kwargs) if op.kwargs else value(*op.args)
            elif type(op) is ItemOp:
                key = op.key
                if type(key) not in SCALAR_TYPES and _has_dynamic((key,)):
                    key = self.resolve(key, {})
                value = value[key]
            else:
                raise AssertionError("unreachable: the policy check refuses unknown operations")
            if type(value) not in _NEVER_AWAITABLE and _is_awaitable(value):
                raise _awaitable_refused(value, chain, index)
        return value

    def result_of(self, chain: OperationChain) -> Any:
        """The result of a nested chain, run now if this is its first use."""
        done = self.results.get(id(chain))
        if done is None:
            done = self.results[id(chain)] = (chain, self.run(chain))
        return done[1]


class _AsyncRun(_Run):
    __slots__ = ()

    async def run(self, chain: OperationChain) -> Any:
        """Run ``chain`` from the root target, awaiting every awaitable value."""
        value, check_get, check_call = self.target, self.check_get, self.check_call
        results = self.results
        for op in chain.ops:
            if type(op) is GetOp:
                check_get(value, op.name)
                value = getattr(value, op.name)
            elif type(op) is CallOp:
                check_call(value)  # before any nested chain of the call runs
                args, kwargs = op.args, op.kwargs
                # One pass while the arguments are plain values or nested chains passed
                # directly, as pipelined calls are: each chain runs (once per execution) as
                # it is met, in argument order. A container or a marker stops the pass, and
                # ``run_nested`` runs the rest in the same order (skipping those that ran).
                values: list[Any] = []
                append = values.append
                resolved: list[Any] | None = values  # None once the pass stops
                for arg in (*args, *kwargs.values()) if kwargs else args:
                    kind = type(arg)
                    if kind in SCALAR_TYPES:
                        pass
                    elif kind is OperationChain or isinstance(arg, OperationChain):
                        done = results.get(id(arg))
                        if done is None:
                            done = results[id(arg)] = (arg, await self.run(arg))
                        arg = done[1]
                    elif kind is list or kind is tuple or kind is dict or isinstance(arg, Marker):
                        resolved = None
                        break
                    append(arg)
                if resolved is None:
                    await self.run_nested((*args, *kwargs.values()))
                    value = self.call_resolved(value, op)
                elif kwargs:
                    count = len(args)
                    positional, named = resolved[:count], resolved[count:]
                    value = value(*positional, **dict(zip(kwargs, named, strict=True)))
                else:
                    value = value(*resolved)
            elif type(op) is ItemOp:
                key = op.key
                if type(key) not in SCALAR_TYPES and _has_dynamic((key,)):
                    await self.run_nested((key,))
                    key = self.resolve(key, {})
                value = value[key]
            else:
                raise AssertionError("unreachable: the policy check refuses unknown operations")
            if type(value) not in _NEVER_AWAITABLE and _is_awaitable(value):
                value = await value
        return value

    async def run_nested(self, values: Iterable[Any]) -> None:
        """Run (and await) the nested chains found in ``values`` that have not run yet."""
        results = self.results
        for chain in _nested_chains(values, set()):
            if id(chain) not in results:
                results[id(chain)] = (chain, await self.run(chain))


def _checked_inject(inject: Mapping[str, Any]) -> Mapping[str, Any]:
    # Exact types first, here and above: an ABC's isinstance is slow, and this runs for
    # every execution.
    if type(inject) is not dict and not isinstance(inject, Mapping):
        raise TypeError(
            f"inject must be a mapping such as {{'result': value}}, not {type(inject).__name__}"
        )
    unknown = [key for key in inject if key not in _INJECT_KEYS]
    if unknown:
        raise ChainValidationError(
            f"unknown inject key(s) {', '.join(map(repr, unknown))}: the keys are 'result'"
            " and 'error'"
        )
    return inject


def _is_awaitable(value: Any) -> bool:
    """``inspect.isawaitable``, answering the usual "no" with one cached ABC check."""
    return isinstance(value, Awaitable) or (
        type(value) is GeneratorType and inspect.isawaitable(value)
    )


def _has_dynamic(values: Iterable[Any], seen: set[int] | None = None) -> bool:
    """Whether a nested chain or marker is among ``values`` or inside their containers."""
    for value in values:
        kind = type(value)
        if kind in SCALAR_TYPES:
            continue
        if kind is list or kind is tuple or kind is dict:
            if seen is None:
                seen = set()
            elif id(value) in seen:
                continue
            seen.add(id(value))
            if _has_dynamic(value.values() if kind is dict else value, seen):
                return True
        elif isinstance(value, _RESOLVED_TYPES):
            return True
    return False


def _call_is_dynamic(op: CallOp) -> bool:
    """Whether a call's arguments hold anything to resolve; quick when all are scalars, or
    when one is a marker (a handler's ``c.result``)."""
    for value in op.args:
        kind = type(value)
        if kind not in SCALAR_TYPES:
            if kind is Marker or kind is OperationChain:
                return True
            return _has_dynamic(op.args) or _has_dynamic(op.kwargs.values())
    return bool(op.kwargs) and _has_dynamic(op.kwargs.values())


def _nested_chains(values: Iterable[Any], seen: set[int]) -> Iterator[OperationChain]:
    """The chains among ``values`` and inside their containers, in order, depth first."""
    for value in values:
        kind = type(value)
        if kind is list or kind is tuple or kind is dict:
            if id(value) not in seen:
                seen.add(id(value))
                yield from _nested_chains(value.values() if kind is dict else value, seen)
        elif isinstance(value, OperationChain):
            yield value


def _awaitable_refused(value: Any, chain: OperationChain, index: int) -> AwaitableResultError:
    """Close a refused coroutine (so it never runs or warns) and describe the refusal."""
    if isinstance(value, Coroutine | GeneratorType):
        value.close()
    done = render(OperationChain._build(chain.ops[: index + 1]))
    return AwaitableResultError(
        f"`{done}` returned an awaitable ({type(value).__name__}) in a synchronous execution"
        f" of `{chain}`: continuation handlers must be synchronous (execute_operation_chain_async"
        " awaits awaitables)"
    )
