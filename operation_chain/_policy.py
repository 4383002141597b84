"""``ExecutionPolicy``: what a chain may reach and how big it may be, checked before it runs.

A chain usually comes from somewhere less trusted than the code it runs against: a network
peer, a stored continuation. The policy is checked in two places:

- ``check`` walks the whole chain statically, nested chains included, before any operation
  runs. It refuses private names, oversized chains and what the target's *class* reveals
  about the first attribute of each chain (a class to call, a module, an unexposed member),
  using static lookups that never run a property or ``__getattr__``.
- ``check_get`` and ``check_call`` run as the executor goes, for objects returned mid-chain,
  which cannot be known in advance.

Refusals raise ``ChainSecurityError`` (``ChainLimitError`` for limits). Strict mode allows
only members marked with ``@expose``; subscription (``ItemOp``) is not a member access and
stays allowed, so expose a method or property to control what a subscript can reach.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Set
from functools import cached_property
from types import (
    AsyncGeneratorType,
    BuiltinFunctionType,
    CodeType,
    CoroutineType,
    FrameType,
    FunctionType,
    GeneratorType,
    MappingProxyType,
    MethodType,
    ModuleType,
    NoneType,
    TracebackType,
)
from typing import Any, Final, NoReturn, TypeVar, get_origin

from pydantic import BaseModel, ConfigDict, Field

from ._chain import CallOp, GetOp, ItemOp, Operation, OperationChain, _set_private
from ._errors import (
    ChainLimitError,
    ChainSecurityError,
    ChainValidationError,
    MarkerNotInjectedError,
)
from ._markers import Marker

_M = TypeVar("_M")

_FORMATTERS: Final = frozenset({"format", "format_map"})
_KWARGS_TYPES: Final = frozenset({dict, MappingProxyType})  # skip the slow ABC check

# First members (class, name, followed by a call, strict) that passed the static check; bounded
# because classes can be made at run time.
_PASSED_FIRST: Final[set[tuple[type, str, bool, bool]]] = set()
_PASSED_FIRST_LIMIT: Final = 4096

_EXPOSED: Final = "__operation_chain_exposed__"
_PRECHECKED: Final = "precheck"  # the key of a chain's private data that holds the note
_MISSING: Final = object()

# The slot descriptors of ``type`` itself: a metaclass cannot override these, so reading a
# class's MRO and namespace through them runs no user code (as ``inspect.getattr_static``).
_type_mro: Final = type.__dict__["__mro__"].__get__
_type_namespace: Final = type.__dict__["__dict__"].__get__

SCALAR_TYPES: Final = frozenset({NoneType, bool, int, float, complex, str, bytes})
"""Argument types that never contain a nested chain or a marker (exact types, no scan)."""

# Interpreter internals whose public attributes reach frames, and from frames any global.
_INTERNAL_TYPES: Final = frozenset(
    {
        FrameType,
        CodeType,
        TracebackType,
        GeneratorType,
        CoroutineType,
        AsyncGeneratorType,
    }
)

# Callables that are certainly not classes: the common case skips the slower checks.
_FUNCTION_TYPES: Final = frozenset({FunctionType, MethodType, BuiltinFunctionType})


class ExecutionPolicy(BaseModel):
    """Limits and rules for executing operation chains.

    Options are keyword-only and validated strictly (a bad value raises pydantic's
    ``ValidationError`` at construction); the policy is immutable, so one instance can be
    shared by every execution.

    Attributes:
        max_operations: operations allowed in a chain, counting every nested chain (a nested
            chain used in several places counts once).
        max_arguments: positional plus keyword arguments allowed in one call.
        max_depth: nesting depth of chains inside chain arguments; the top chain is depth 1.
        max_encoded_size: bytes allowed in an encoded chain, for code that parses chains.
        strict: allow only members marked with ``@expose`` (subscription stays allowed).
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    max_operations: int = Field(default=50, gt=0)
    max_arguments: int = Field(default=100, gt=0)
    max_depth: int = Field(default=8, gt=0)
    max_encoded_size: int = Field(default=1_048_576, gt=0)
    strict: bool = False

    def check(
        self,
        chain: OperationChain,
        target: object = None,
        *,
        injected: Set[str] | None = None,
    ) -> None:
        """Check a whole chain before any part of it runs; run nothing.

        Args:
            chain: the chain, whose nested chains (in call arguments and item keys, inside
                lists, tuples and dict values) are checked too.
            target: the object the chain will run against. When given, the first attribute
                of every chain (top and nested) is looked up statically on its class.
                ``None`` means "no target to check".
            injected: the marker names that will be injected. When given, a marker outside
                it raises ``MarkerNotInjectedError`` here rather than midway through a run.

        Raises:
            ChainSecurityError: a private name, a class to call, a module, or (strict mode)
                an unexposed member.
            ChainLimitError: too many operations or arguments, or nesting too deep.
            ChainValidationError: the chain is malformed (unknown operation, non-string
                name, or a chain that contains itself through its arguments).
            MarkerNotInjectedError: see ``injected``.
        """
        if type(chain) is not OperationChain and not isinstance(chain, OperationChain):
            raise TypeError(f"check() takes an OperationChain, not {type(chain).__name__}")
        private = chain.__pydantic_private__
        if private:
            record = private.get(_PRECHECKED)
            if record is not None and record.covers(self, chain, injected):
                if target is not None:
                    for ops in record.firsts:
                        _check_first(self, target, ops)
                return
        _StaticCheck(self, target, injected).run(chain)

    def precheck(self, chain: OperationChain, *, injected: Set[str] = frozenset()) -> None:
        """Check ``chain`` without a target, as ``check`` does, and note on it that it passed.

        A later ``check`` of the same chain by this policy (the one every execution makes)
        then repeats only what needs the target: the static lookup of each chain's first
        member. A server that checks a request's chains before running any of them thus
        walks each chain once, not twice.

        The note is keyed to this policy and to the chain's operations, and covers the same
        or more ``injected`` names. It cannot see a list or dict argument changed in place
        afterwards, so precheck only chains nothing else can reach before they run, such as
        those just decoded from a request. The checks made while a chain runs
        (``check_get``, ``check_call``) happen either way.

        Raises:
            TypeError: ``chain`` is not an ``OperationChain``.
            ChainSecurityError: as for ``check`` (``ChainLimitError`` for limits).
            ChainValidationError: as for ``check``.
            MarkerNotInjectedError: a marker outside ``injected`` (none, by default).

        A chain that fails gets no note.
        """
        if not isinstance(chain, OperationChain):
            raise TypeError(f"precheck() takes an OperationChain, not {type(chain).__name__}")
        walk = _StaticCheck(self, None, injected)
        walk.firsts = {}
        walk.run(chain)
        record = _Prechecked(self, chain.ops, frozenset(injected), tuple(walk.firsts.values()))
        _set_private(chain, {_PRECHECKED: record})

    def check_encoded_size(self, size: int) -> None:
        """Refuse an encoded chain of ``size`` bytes if it is over ``max_encoded_size``."""
        if size > self.max_encoded_size:
            raise ChainLimitError(
                f"the encoded chain has {size} bytes: {size} > {self.max_encoded_size}"
                " (max_encoded_size)"
            )

    def check_get(self, obj: object, name: str) -> None:
        """Refuse reading ``obj.name`` if the policy forbids it; never reads it.

        Private names are refused again here (the static check already did) as defence in
        depth, and so is any attribute of a module, whatever returned it. So are attributes
        of frames, code objects, tracebacks, generators and coroutines: their public names
        (``gi_frame.f_builtins``, ``tb_frame.f_globals``) lead to ``eval`` and every module.
        """
        if name.startswith("_"):
            _refuse_name(name, "attribute")
        if isinstance(obj, ModuleType):
            raise ChainSecurityError(
                f"refused attribute {name!r} of the module {obj.__name__!r}: modules are not"
                " reachable through a chain"
            )
        if type(obj) in _INTERNAL_TYPES:
            raise ChainSecurityError(
                f"refused attribute {name!r} of a {type(obj).__name__} object: frames, code,"
                " tracebacks, generators and coroutines are not reachable through a chain"
            )
        if self.strict:
            _check_exposed(type(obj), name)

    def check_call(self, callee: object) -> None:
        """Refuse calling a class (any ``type`` instance, builtins included) or a module.

        Instantiating arbitrary classes would run constructors the target never meant to
        offer (``type``, ``object``, ``subprocess.Popen``...), so classes are never callable,
        and neither are parametrized generics (``list[int]``, ``MyModel[str]``), which
        instantiate their class when called, nor a ``functools.partial`` of a class.
        ``str.format`` and ``str.format_map`` are refused too: a format string walks
        attributes (``"{0.__init__.__globals__}"``) where the policy cannot see the names.
        Checks types only; never calls anything.
        """
        kind = type(callee)
        if kind is BuiltinFunctionType:
            name = getattr(callee, "__name__", "")
            if name in _FORMATTERS and isinstance(getattr(callee, "__self__", None), str):
                raise ChainSecurityError(
                    f"refused call of str.{name}: a format string reads attributes the policy"
                    " cannot check"
                )
            return
        if kind in _FUNCTION_TYPES:
            return
        if isinstance(callee, functools.partial):
            self.check_call(callee.func)
            return
        if isinstance(callee, type) or get_origin(callee) is not None:
            name = callee.__qualname__ if isinstance(callee, type) else repr(callee)
            raise ChainSecurityError(
                f"refused call of the class {name!r}: classes are not callable through a chain"
            )
        if isinstance(callee, ModuleType):
            raise ChainSecurityError(
                f"refused call of the module {callee.__name__!r}: modules are not reachable"
                " through a chain"
            )


DEFAULT_POLICY: Final = ExecutionPolicy()
"""The policy used when an execution is given none: default limits, not strict."""

# The static check calls these as plain functions, saving a method lookup on the pydantic
# model (which defines ``__getattr__``, so Python cannot specialize the lookup) per chain.
_check_get: Final = ExecutionPolicy.check_get
_check_call: Final = ExecutionPolicy.check_call


def expose(member: _M) -> _M:
    """Mark a method or property as callable through a chain under a strict policy.

    Works on plain functions, ``staticmethod``, ``classmethod``, ``property`` and
    ``functools.cached_property``, in any decorator order (the underlying function carries
    the mark), though mypy accepts only ``@property`` above ``@expose``. The member is
    returned unchanged. A subclass that overrides an exposed member must expose its override
    too: exposure is decided by what the class lookup finds.

    Raises:
        TypeError: ``member`` is none of the supported kinds.
    """
    function = _underlying_function(member)
    if function is None:
        raise TypeError(
            "expose() marks functions, staticmethods, classmethods and properties, not"
            f" {type(member).__name__}"
        )
    setattr(function, _EXPOSED, True)
    return member


def marker_not_injected(marker: Marker) -> MarkerNotInjectedError:
    """The error for a marker that reached execution without an injected value."""
    return MarkerNotInjectedError(
        f"the marker {marker} has no value: pass inject={{{marker.name!r}: ...}} to execute"
        " a chain that uses it"
    )


def _underlying_function(member: object) -> FunctionType | None:
    """The function that carries the ``@expose`` mark for ``member``, if it has one."""
    if isinstance(member, staticmethod | classmethod):
        member = member.__func__
    elif isinstance(member, property):
        member = member.fget
    elif isinstance(member, cached_property):
        member = member.func
    return member if isinstance(member, FunctionType) else None


def _class_member(cls: type, name: str) -> object:
    """What ``cls`` defines as ``name`` along its MRO, found without running any code.

    ``inspect.getattr_static(cls, name)`` restricted to what an instance sees through its
    class (it also searches the metaclass, which instances never see), at a fraction of its
    cost: this runs on every execution.
    """
    for base in _type_mro(cls):
        namespace = _type_namespace(base)
        if name in namespace:
            return namespace[name]
    return _MISSING


def _check_exposed(cls: type, name: str) -> None:
    """Refuse ``name`` on instances of ``cls`` unless the class lookup finds a marked member."""
    member = _class_member(cls, name)
    function = _underlying_function(member)
    if function is not None and function.__dict__.get(_EXPOSED) is True:
        return
    hint = " (instance attributes cannot be exposed; expose a property)"
    raise ChainSecurityError(
        f"refused {cls.__qualname__}.{name}: the strict policy allows only members marked"
        f" with @expose; mark it with @expose to allow it{hint if member is _MISSING else ''}"
    )


def _check_first(policy: ExecutionPolicy, target: object, ops: tuple[Operation, ...]) -> None:
    """Check a chain's first operation against what the target's class reveals."""
    first = ops[0]
    if type(first) is CallOp:
        _check_call(policy, target)
    elif type(first) is GetOp:
        # Everything below depends only on the class, the name and the policy, so a verdict
        # that passed is remembered. Should the class later be changed to hold a class or
        # module under that name, the runtime checks still refuse it before any call (and
        # its nested chains) runs.
        calls = len(ops) > 1 and type(ops[1]) is CallOp
        verdict = (type(target), first.name, calls, policy.strict)
        if verdict in _PASSED_FIRST:
            return
        if policy.strict or isinstance(target, ModuleType) or type(target) in _INTERNAL_TYPES:
            _check_get(policy, target, first.name)  # private names: refused by the walk
        member = _class_member(type(target), first.name)
        if isinstance(member, staticmethod):
            member = member.__func__
        if isinstance(member, ModuleType):
            raise ChainSecurityError(
                f"refused attribute {first.name!r}: it is the module {member.__name__!r},"
                " and modules are not reachable through a chain"
            )
        if calls:
            _check_call(policy, member)
        if len(_PASSED_FIRST) < _PASSED_FIRST_LIMIT:
            _PASSED_FIRST.add(verdict)


class _Prechecked:
    """What ``ExecutionPolicy.precheck`` notes on a chain that passed (a plain class: it is
    made for every request a server checks, and a frozen dataclass costs more to build)."""

    __slots__ = ("firsts", "injected", "ops", "policy")

    def __init__(
        self,
        policy: ExecutionPolicy,
        ops: tuple[Operation, ...],
        injected: frozenset[str],
        firsts: tuple[tuple[Operation, ...], ...],
    ) -> None:
        self.policy = policy
        self.ops = ops
        self.injected = injected
        self.firsts = firsts  # what _check_first needs to see, once per distinct verdict

    def covers(
        self, policy: ExecutionPolicy, chain: OperationChain, injected: Set[str] | None
    ) -> bool:
        """Whether the note vouches for ``policy.check(chain, injected=injected)``."""
        return (
            self.policy is policy
            and self.ops is chain.ops
            and (injected is None or not self.injected or self.injected.issubset(injected))
        )


class _StaticCheck:
    """One walk of ``ExecutionPolicy.check`` over a chain and its nested chains.

    Nested chains are visited once each (by identity) and remember their height, so a chain
    shared by many arguments costs one walk; a chain met again while it is still being walked
    contains itself, which would never finish executing. Containers are walked with a seen
    set per chain, so shared or cyclic argument data costs one walk per chain. This runs
    before every execution, hence the limits copied into slots and the loops written out.
    """

    __slots__ = (
        "_heights",
        "_injected",
        "_max_arguments",
        "_max_depth",
        "_max_operations",
        "_operations",
        "_policy",
        "_target",
        "_top",
        "firsts",
    )

    def __init__(self, policy: ExecutionPolicy, target: object, injected: Set[str] | None):
        self._policy = policy
        self._target = target
        self._injected = injected
        self._max_arguments = policy.max_arguments
        self._max_depth = policy.max_depth
        self._max_operations = policy.max_operations
        self._operations = 0
        # Each nested chain met (by id), with its height: 0 while it is being walked.
        self._heights: dict[int, tuple[OperationChain, int]] = {}
        # When a dict: for each distinct verdict of _check_first (it depends only on the
        # first operation, and for a read on its name and whether a call follows), the
        # operations of the first chain walked that needs it, in the order a full check with
        # a target would look them up.
        self.firsts: dict[object, tuple[Operation, ...]] | None = None

    def run(self, chain: OperationChain) -> None:
        self._top = chain
        self._walk_chain(chain, 1)

    def _nested(self, chain: OperationChain, depth: int) -> int:
        """Check a chain nested at ``depth``; return its height (1 when flat)."""
        key = id(chain)
        heights = self._heights
        known = heights.get(key)
        if known is not None and known[1]:
            if depth - 1 + known[1] > self._max_depth:
                self._refuse_depth(depth - 1 + known[1])
            return known[1]
        if known is not None or chain is self._top:  # met again while being walked
            # Not rendered: the text of a chain that contains itself never ends.
            raise ChainValidationError(
                "a nested chain contains itself through its arguments and would never finish"
                " executing"
            )
        if depth > self._max_depth:
            self._refuse_depth(depth)
        heights[key] = (chain, 0)  # height 0: being walked
        height = self._walk_chain(chain, depth)
        heights[key] = (chain, height)
        return height

    def _walk_chain(self, chain: OperationChain, depth: int) -> int:
        """Count and check ``chain``'s operations; return its height."""
        ops = chain.ops
        self._operations += len(ops)
        if self._operations > self._max_operations:
            self._refuse_operations()
        height = 1 + self._walk(ops, depth)
        if ops:
            if self._target is not None:
                _check_first(self._policy, self._target, ops)
            if self.firsts is not None:
                first = ops[0]
                if type(first) is GetOp:
                    key = (first.name, len(ops) > 1 and type(ops[1]) is CallOp)
                    self.firsts.setdefault(key, ops)
                elif type(first) is CallOp:
                    self.firsts.setdefault(CallOp, ops)
        return height

    def _walk(self, ops: tuple[Operation, ...], depth: int) -> int:
        """Check each operation; return the height of the deepest chain nested in them."""
        max_arguments = self._max_arguments
        height = 0
        seen: set[int] | None = None
        values: tuple[Any, ...]
        for op in ops:
            if type(op) is GetOp:
                if type(op.name) is not str or op.name.startswith("_"):
                    _refuse_name(op.name, "attribute")
                continue
            if type(op) is CallOp:
                values, kwargs = op.args, op.kwargs
                if (
                    type(values) is not tuple
                    or (type(kwargs) not in _KWARGS_TYPES and not isinstance(kwargs, Mapping))
                    or len(values) + len(kwargs) > max_arguments
                ):
                    self._refuse_call(op)
                if kwargs:
                    for name in kwargs:
                        if type(name) is not str or name.startswith("_"):
                            _refuse_name(name, "keyword argument")
                    values = (*values, *kwargs.values())
            elif type(op) is ItemOp:
                values = (op.key,)
            else:
                raise ChainValidationError(f"unknown operation {op!r} in a chain")
            for value in values:
                kind = type(value)
                if kind in SCALAR_TYPES:
                    continue
                if kind is OperationChain:  # passed directly, as pipelined calls are
                    found = self._nested(value, depth + 1)
                elif kind is Marker:  # c.result in a handler: every continuation has one
                    injected = self._injected
                    if injected is not None and value.name not in injected:
                        raise marker_not_injected(value)
                    continue
                else:
                    if seen is None:
                        seen = set()
                    found = self._value(value, depth, seen)
                if found > height:
                    height = found
        return height

    def _value(self, value: Any, depth: int, seen: set[int]) -> int:
        """Check an argument value; return the height of the deepest chain inside it."""
        kind = type(value)
        if kind is list or kind is tuple or kind is dict:
            if id(value) in seen:
                return 0
            seen.add(id(value))
            height = 0
            for item in value.values() if kind is dict else value:
                if type(item) not in SCALAR_TYPES:
                    height = max(height, self._value(item, depth, seen))
            return height
        if isinstance(value, OperationChain):
            return self._nested(value, depth + 1)
        injected = self._injected
        if isinstance(value, Marker) and injected is not None and value.name not in injected:
            raise marker_not_injected(value)
        return 0

    def _refuse_depth(self, depth: int) -> NoReturn:
        raise ChainLimitError(
            f"chains are nested {depth} deep in the arguments: {depth} > {self._max_depth}"
            " (max_depth; the top chain is depth 1)"
        )

    def _refuse_operations(self) -> NoReturn:
        total, limit = self._operations, self._max_operations
        raise ChainLimitError(
            f"the chain has at least {total} operations, counting its nested chains:"
            f" {total} > {limit} (max_operations)"
        )

    def _refuse_call(self, op: CallOp) -> NoReturn:
        if type(op.args) is not tuple or not isinstance(op.kwargs, Mapping):
            raise ChainValidationError(
                f"malformed call {op!r}: args must be a tuple and kwargs a mapping"
            )
        count, limit = len(op.args) + len(op.kwargs), self._max_arguments
        raise ChainLimitError(
            f"a call has {count} arguments (positional and keyword): {count} > {limit}"
            " (max_arguments)"
        )


def _refuse_name(name: object, what: str) -> NoReturn:
    """Refuse a non-string or private attribute or keyword name."""
    if type(name) is not str:
        raise ChainValidationError(f"{what} names must be strings, not {type(name).__name__}")
    raise ChainSecurityError(
        f"refused {what} {name!r}: names starting with '_' are private and never"
        " reachable through a chain"
    )
