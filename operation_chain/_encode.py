"""Encoding: Python values to the codec's JSON-compatible tagged tree.

A tag is a JSON object with exactly one key starting with ``$`` (``{"$bytes": "aGk="}``).
Every other JSON value stands for itself, so JSON-native data encodes to itself; a user dict
that happens to have that one-``$``-key shape is escaped as ``{"$dict": [[k, v], ...]}``.

Mutable containers and objects are numbered in visit order. A second visit of the same object
becomes ``{"$ref": n}`` and its first visit is wrapped as ``{"$id": [n, ...]}``, which keeps
shared references and cycles. The wrapping needs to know which objects are shared, so an
encoding that finds any shared object runs a second pass with that knowledge; values without
sharing pay for one pass only.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import hashlib
import hmac
import traceback
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from ._chain import CallOp, GetOp, ItemOp, Operation, OperationChain
from ._errors import RemoteError, UnsupportedTypeError
from ._markers import Marker
from ._proxy import OperationProxy
from ._registry import dataclass_fields

if TYPE_CHECKING:
    from ._codec import Codec

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
"""Integers outside this range are tagged: it is what orjson (and most JSON peers) read."""

SAFE_EXCEPTIONS: dict[str, type[BaseException]] = {
    cls.__name__: cls
    for cls in (
        ArithmeticError,
        AssertionError,
        AttributeError,
        BufferError,
        ConnectionAbortedError,
        ConnectionError,
        ConnectionRefusedError,
        ConnectionResetError,
        EOFError,
        Exception,
        FileExistsError,
        FileNotFoundError,
        FloatingPointError,
        IndexError,
        InterruptedError,
        IsADirectoryError,
        KeyError,
        LookupError,
        NotADirectoryError,
        NotImplementedError,
        OverflowError,
        PermissionError,
        RecursionError,
        RuntimeError,
        TimeoutError,
        TypeError,
        UnicodeError,
        ValueError,
        ZeroDivisionError,
    )
}
"""Builtin exceptions rebuilt as themselves: plain constructors, no side effects."""


class Unsupported(Exception):
    """Raised inside the encoder; collects the path as it unwinds, then becomes public."""

    def __init__(self, type_name: str, reason: str = "") -> None:
        super().__init__(type_name)
        self.type_name = type_name
        self.reason = reason
        self.parts: list[str] = []

    def public(self) -> UnsupportedTypeError:
        return UnsupportedTypeError(
            self.type_name, "$" + "".join(reversed(self.parts)), self.reason
        )


def _key_part(key: Any) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f".{key}"
    return f"[{key!r}]"


def type_name(value: Any) -> str:
    return qualified_name(type(value))


def qualified_name(cls: type) -> str:
    """``ValueError`` for builtins, ``module.QualName`` for everything else."""
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


class Encoder:
    """One encoding: holds the identity memo for a single top-level value."""

    __slots__ = ("codec", "depth", "memo", "objects", "open_models", "shared", "wrapped")

    def __init__(self, codec: Codec, shared: set[int] | None = None) -> None:
        self.codec = codec
        self.memo: dict[int, int] = {}
        self.objects: list[Any] = []  # numbered objects, alive so that their ids stay unique
        self.depth = 0
        # Created when first needed: most values share nothing and hold no pydantic model.
        self.shared: set[int] | None = shared
        self.wrapped = shared is not None
        self.open_models: set[int] | None = None

    # -- identity ----------------------------------------------------------------------------

    def seen(self, value: Any) -> Any:
        """A ``$ref`` if ``value`` was visited before, else ``None`` after numbering it."""
        key = id(value)
        number = self.memo.get(key)
        if number is not None:
            return self.ref(key, number, value)
        self.memo[key] = len(self.objects)
        self.objects.append(value)
        return None

    def ref(self, key: int, number: int, value: Any) -> dict[str, int]:
        if self.open_models and key in self.open_models:
            raise Unsupported(
                type_name(value),
                "a reference cycle through a pydantic model cannot be rebuilt with"
                " validation; use a dataclass or break the cycle",
            )
        if self.shared is None:
            self.shared = set()
        self.shared.add(number)
        return {"$ref": number}

    def wrap(self, value: Any, encoded: Any) -> Any:
        """Wrap a first visit as ``$id`` when the first pass found it shared."""
        if self.wrapped:
            number = self.memo[id(value)]
            if self.shared is not None and number in self.shared:
                return {"$id": [number, encoded]}
        return encoded

    # -- values ------------------------------------------------------------------------------

    def enc(self, value: Any) -> Any:
        kind = type(value)
        if kind is str:
            return value if value.isascii() or _utf8_clean(value) else _encode_odd_str(value)
        if kind is int:
            return value if INT_MIN <= value <= INT_MAX else {"$int": format(value, "x")}
        if kind is bool or value is None:
            return value
        if kind is float:
            return value if value - value == 0.0 else {"$float": repr(value)}
        if kind is list or kind is dict or kind is tuple:
            return self.container(value, kind)
        encoder = _SCALAR_ENCODERS.get(kind)
        if encoder is not None:
            return encoder(value)
        return self.other(value)

    def container(self, value: Any, kind: type) -> Any:
        if kind is tuple:
            return {"$tuple": self.items(value)}
        key = id(value)
        memo = self.memo
        if key in memo:
            return self.ref(key, memo[key], value)
        memo[key] = len(self.objects)
        self.objects.append(value)
        encoded = self.items(value) if kind is list else self.mapping(value)
        return self.wrap(value, encoded) if self.wrapped else encoded

    def descend(self) -> None:
        self.depth += 1
        if self.depth > self.codec.max_depth:
            raise Unsupported("nesting", f"values nest deeper than {self.codec.max_depth} levels")

    def items(self, values: Any) -> list[Any]:
        self.descend()
        out: list[Any] = []
        append = out.append
        enc = self.enc
        try:
            # Plain scalars, the bulk of most data, skip the call to enc().
            for item in values:
                kind = type(item)
                if kind is str:
                    append(item if item.isascii() else enc(item))
                elif kind is bool or item is None or (kind is int and INT_MIN <= item <= INT_MAX):
                    append(item)
                elif kind is dict or kind is list:
                    append(self.container(item, kind))
                else:
                    append(enc(item))
        except Unsupported as exc:
            exc.parts.append(f"[{len(out)}]")
            raise
        self.depth -= 1
        return out

    def mapping(self, value: dict[Any, Any]) -> Any:
        if len(value) == 1:
            (only,) = value
            if type(only) is not str or only[:1] == "$":
                return self.pairs(value)
        elif any(type(k) is not str for k in value):
            return self.pairs(value)
        self.descend()
        out: dict[str, Any] = {}
        enc = self.enc
        key: Any = None
        try:
            for key, item in value.items():
                kind = type(item)
                if kind is str:
                    out[key] = item if item.isascii() else enc(item)
                elif kind is bool or item is None or (kind is int and INT_MIN <= item <= INT_MAX):
                    out[key] = item
                elif kind is dict or kind is list:
                    out[key] = self.container(item, kind)
                else:
                    out[key] = enc(item)
        except Unsupported as exc:
            exc.parts.append(_key_part(key))
            raise
        self.depth -= 1
        return out

    def pairs(self, value: dict[Any, Any]) -> Any:
        self.descend()
        out: list[Any] = []
        key: Any = None
        try:
            for key, item in value.items():
                out.append([self.enc(key), self.enc(item)])
        except Unsupported as exc:
            exc.parts.append(_key_part(key))
            raise
        self.depth -= 1
        return {"$dict": out}

    def other(self, value: Any) -> Any:
        """Everything past the JSON-native fast path, including user types."""
        if isinstance(value, OperationChain):
            return self.chain(value)
        if isinstance(value, Marker):
            return {"$marker": value.name}
        if isinstance(value, (set, frozenset)) and type(value) in (set, frozenset):
            return self.set_like(value)
        if isinstance(value, BaseException):
            return self.exception(value)
        registry_name = self.codec.registry.name_of(type(value))
        if registry_name is not None:
            return self.registered(value, registry_name)
        if self.codec.trusted:
            return self.pickled(value)
        raise Unsupported(type_name(value), _unsupported_reason(value))

    def set_like(self, value: set[Any] | frozenset[Any]) -> Any:
        tag = "$set" if type(value) is set else "$frozenset"
        if tag == "$frozenset":
            return {tag: self.items(value)}
        ref = self.seen(value)
        if ref is not None:
            return ref
        return self.wrap(value, {tag: self.items(value)})

    def registered(self, value: Any, name: str) -> Any:
        if isinstance(value, enum.Enum):
            return {"$enum": [name, value.name]}
        ref = self.seen(value)
        if ref is not None:
            return ref
        if isinstance(value, BaseModel):
            names: Any = type(value).model_fields
            if self.open_models is None:
                self.open_models = set()
            self.open_models.add(id(value))
        else:
            names = dataclass_fields(type(value))
        self.descend()
        state: dict[str, Any] = {}
        field = ""
        try:
            for field in names:
                state[field] = self.enc(getattr(value, field))
        except Unsupported as exc:
            exc.parts.append(f".{field}")
            raise
        self.depth -= 1
        if self.open_models:
            self.open_models.discard(id(value))
        return self.wrap(value, {"$obj": [name, state]})

    def exception(self, exc: BaseException) -> Any:
        if isinstance(exc, RemoteError):
            return {
                "$exc": {
                    "type": exc.type_name,
                    "args": None,
                    "message": exc.message,
                    "traceback": exc.remote_traceback if self.codec.tracebacks else None,
                }
            }
        return {
            "$exc": {
                "type": self.exception_name(type(exc)),
                "args": self.exception_args(exc),
                "message": str(exc),
                "traceback": self.traceback_text(exc),
            }
        }

    def exception_name(self, cls: type[BaseException]) -> str:
        return self.codec.registry.name_of(cls) or qualified_name(cls)

    def exception_args(self, exc: BaseException) -> Any:
        """The args, or ``None`` when they cannot be encoded (the message still travels)."""
        saved = dict(self.memo), list(self.objects), self.depth
        try:
            return self.items(exc.args)
        except Unsupported:
            self.memo, self.objects, self.depth = saved
            return None

    def traceback_text(self, exc: BaseException) -> str | None:
        if not self.codec.tracebacks or exc.__traceback__ is None:
            return None
        return "".join(traceback.format_exception(exc))

    def pickled(self, value: Any) -> Any:
        import cloudpickle  # on first use: only trusted codecs need it, and it is slow to load

        try:
            blob = cloudpickle.dumps(value)
        except Exception as exc:
            raise Unsupported(type_name(value), f"cloudpickle failed: {exc}") from exc
        key = self.codec.signing_key
        signature = hmac.new(key, blob, hashlib.sha256).hexdigest() if key else None
        return {"$pickle": [base64.b64encode(blob).decode("ascii"), signature]}

    # -- chains ------------------------------------------------------------------------------

    def chain(self, chain: OperationChain) -> Any:
        # seen() and wrap(), inlined: pipelined calls nest a chain per call.
        key = id(chain)
        memo = self.memo
        if key in memo:
            return self.ref(key, memo[key], chain)
        memo[key] = len(self.objects)
        self.objects.append(chain)
        encoded = {"$chain": self.ops(chain)}
        return self.wrap(chain, encoded) if self.wrapped else encoded

    def ops(self, chain: OperationChain) -> list[Any]:
        self.descend()
        out = self.indexed(chain.ops, self.op, ".ops")
        self.depth -= 1
        return out

    def indexed(self, values: Any, encode: Any, label: str) -> list[Any]:
        """Encode each value; a failure's path names its index under ``label``."""
        out: list[Any] = []
        try:
            for value in values:
                out.append(encode(value))
        except Unsupported as exc:
            exc.parts.append(f"{label}[{len(out)}]")
            raise
        return out

    def op(self, op: Any) -> dict[str, Any]:
        kind = type(op)
        if kind is GetOp:
            return {"op": "get", "name": op.name}
        if kind is ItemOp:
            try:
                return {"op": "item", "key": self.enc(op.key)}
            except Unsupported as exc:
                exc.parts.append(".key")
                raise
        if kind is CallOp:
            return {"op": "call", "args": self.call_args(op), "kwargs": self.call_kwargs(op)}
        raise Unsupported(type_name(op), "not an operation (GetOp, ItemOp or CallOp)")

    def call_args(self, op: CallOp) -> list[Any]:
        out: list[Any] = []
        append = out.append
        try:
            # Plain scalars and nested chains (pipelined calls) skip the dispatch in enc().
            for value in op.args:
                kind = type(value)
                if kind is bool or value is None or (kind is int and INT_MIN <= value <= INT_MAX):
                    append(value)
                elif kind is OperationChain:
                    append(self.chain(value))
                else:
                    append(self.enc(value))
        except Unsupported as exc:
            exc.parts.append(f".args[{len(out)}]")
            raise
        return out

    def call_kwargs(self, op: CallOp) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not op.kwargs:
            return out
        name = ""
        try:
            for name, value in op.kwargs.items():
                out[name] = self.enc(value)
        except Unsupported as exc:
            exc.parts.append(f".kwargs{_key_part(name)}")
            raise
        return out


def plain_ops(ops: tuple[Operation, ...], max_depth: int) -> list[dict[str, Any]] | None:
    """The encoded operations when every argument and item key encodes to itself or is a
    nested chain of the same kind, else ``None``: the common chain (``p.increment(2)``, or a
    pipelined ``p.add(p.ping(), 1)``) then needs no ``Encoder`` walk.

    Only values that are their own encoding pass, with markers and nested chains: ASCII
    strings, integers in the JSON range, finite floats, booleans and ``None``. Anything else,
    even a non-ASCII string, a nested chain met twice (the ``Encoder`` writes a ``$ref``) or
    chains nested deeper than ``max_depth`` (the ``Encoder`` refuses them) gives ``None``,
    and the caller runs ``Encoder.op``, which produces the same tree for what passes here.
    """
    try:
        return _plain_ops(ops, max_depth - 1, set())
    except RecursionError:  # a roomy max_depth: the Encoder reports it as a CodecError
        return None


def _plain_ops(
    ops: tuple[Operation, ...], budget: int, seen: set[int]
) -> list[dict[str, Any]] | None:
    """``plain_ops`` for a chain under which ``budget`` more levels of chains may nest;
    ``seen`` holds the ids of the nested chains met so far."""
    out: list[dict[str, Any]] = []
    for op in ops:
        if type(op) is GetOp:
            out.append({"op": "get", "name": op.name})
        elif type(op) is CallOp:
            args, kwargs = op.args, op.kwargs
            encoded_args = _plain_values(args, budget, seen) if args else []
            if encoded_args is None:
                return None
            if kwargs:
                values = _plain_values(kwargs.values(), budget, seen)
                if values is None:
                    return None
                encoded_kwargs = dict(zip(kwargs, values, strict=True))
            else:
                encoded_kwargs = {}
            out.append({"op": "call", "args": encoded_args, "kwargs": encoded_kwargs})
        elif type(op) is ItemOp:
            key = _plain_values((op.key,), budget, seen)
            if key is None:
                return None
            out.append({"op": "item", "key": key[0]})
        else:
            return None
    return out


def _plain_values(values: Iterable[Any], budget: int, seen: set[int]) -> list[Any] | None:
    """The encoded ``values`` when each is its own encoding, a marker or a plain nested
    chain (see ``plain_ops``), else ``None``."""
    out: list[Any] = []
    for value in values:
        kind = type(value)
        if kind is str:
            if not value.isascii():
                return None
        elif kind is int:
            if not INT_MIN <= value <= INT_MAX:
                return None
        elif kind is OperationChain:
            if not budget or id(value) in seen:
                return None
            seen.add(id(value))
            nested = _plain_ops(value.ops, budget - 1, seen)
            if nested is None:
                return None
            value = {"$chain": nested}
        elif kind is float:
            if value - value != 0.0:  # nan and the infinities are tagged
                return None
        elif kind is Marker:
            value = {"$marker": value.name}
        elif kind is not bool and value is not None:
            return None
        out.append(value)
    return out


def _utf8_clean(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _encode_odd_str(text: str) -> Any:
    """Strings with lone surrogates are valid Python but not valid UTF-8 JSON."""
    raw = text.encode("utf-8", "surrogatepass")
    return {"$str": base64.b64encode(raw).decode("ascii")}


def _unsupported_reason(value: Any) -> str:
    if isinstance(value, OperationProxy):
        return "pass proxies as direct arguments, list items or dict values, or use chain_of()"
    if dataclasses.is_dataclass(value) or isinstance(value, (BaseModel, enum.Enum)):
        return "register the class with operation_chain.register_type()"
    return "not a supported type in safe mode"


def _encode_datetime(value: dt.datetime) -> Any:
    tz = value.tzinfo
    if value.fold == 0 and (tz is None or type(tz) is dt.timezone):
        return {"$datetime": value.isoformat()}
    return {"$datetime": [value.isoformat(), _zone_key(tz, value), value.fold]}


def _encode_time(value: dt.time) -> Any:
    tz = value.tzinfo
    if value.fold == 0 and (tz is None or type(tz) is dt.timezone):
        return {"$time": value.isoformat()}
    return {"$time": [value.isoformat(), _zone_key(tz, value), value.fold]}


def _zone_key(tz: dt.tzinfo | None, value: Any) -> str | None:
    if tz is None or type(tz) is dt.timezone:
        return None
    if type(tz) is ZoneInfo and tz.key:
        return tz.key
    raise Unsupported(type_name(value), f"its tzinfo {type(tz).__name__} has no portable name")


def _encode_bytes(value: bytes) -> Any:
    return {"$bytes": base64.b64encode(value).decode("ascii")}


def _encode_bytearray(value: bytearray) -> Any:
    return {"$bytearray": base64.b64encode(value).decode("ascii")}


_SCALAR_ENCODERS: dict[type, Any] = {
    bytes: _encode_bytes,
    bytearray: _encode_bytearray,
    dt.datetime: _encode_datetime,
    dt.date: lambda v: {"$date": v.isoformat()},
    dt.time: _encode_time,
    dt.timedelta: lambda v: {"$timedelta": [v.days, v.seconds, v.microseconds]},
    Decimal: lambda v: {"$decimal": str(v)},
    uuid.UUID: lambda v: {"$uuid": str(v)},
}
