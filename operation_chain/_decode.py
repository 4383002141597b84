"""Decoding: the codec's tagged JSON tree back to Python values.

The input is untrusted: every shape is checked, and anything malformed raises
``DecodeError`` (or ``ChainValidationError`` for a malformed chain) naming where it was.
Only registered classes are rebuilt, and pickle blobs are read only by a trusted codec.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import hashlib
import hmac
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from ._chain import GET_OPS, NO_ARGUMENTS, ItemOp, Operation, OperationChain, call_op
from ._encode import SAFE_EXCEPTIONS
from ._errors import ChainValidationError, DecodeError, RemoteError, SignatureError
from ._markers import Marker
from ._registry import dataclass_fields

if TYPE_CHECKING:
    from ._codec import Codec

JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


def scan(value: Any, limit: int, depth: int = 0) -> bool:
    """Whether a JSON tree holds any tag; raises on non-JSON types and excessive depth.

    This is the decoding fast path: a tree without tags *is* its own decoded value.
    """
    if depth > limit:
        raise DecodeError(f"encoded data nests deeper than {limit} levels")
    kind = type(value)
    if kind is dict:
        found = False
        for key in value:
            if type(key) is not str:
                raise DecodeError(f"encoded data has a non-string object key {key!r}")
            found = len(value) == 1 and key[:1] == "$"
        items: Any = value.values()
    elif kind is list:
        found = False
        items = value
    elif kind in JSON_SCALARS:
        return False
    else:
        raise DecodeError(f"encoded data holds a {kind.__name__}, not a JSON value")
    for item in items:
        kind = type(item)
        if kind is dict or kind is list:
            found = scan(item, limit, depth + 1) or found
        elif kind not in JSON_SCALARS:
            raise DecodeError(f"encoded data holds a {kind.__name__}, not a JSON value")
    return found


class _Pending:
    """Stands in for an object whose ``$id`` is being decoded and cannot exist yet."""

    __slots__ = ()


class Decoder:
    """One decoding: holds the ``$id`` table of a single top-level value."""

    __slots__ = ("codec", "depth", "refs")

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.refs: dict[int, Any] = {}
        self.depth = 0

    def dec(self, value: Any) -> Any:
        kind = type(value)
        if kind is dict:
            if len(value) == 1:
                (key,) = value
                if key == "$chain":  # a nested chain, as pipelined calls send: no lookup
                    return OperationChain._build(self.ops(value[key], "$chain"))
                if key[:1] == "$":
                    return self.tag(key, value[key])
            self.descend()
            dec = self.dec
            # Scalars, the bulk of most data, skip the call to dec().
            out = {k: v if type(v) in JSON_SCALARS else dec(v) for k, v in value.items()}
            self.depth -= 1
            return out
        if kind is list:
            self.descend()
            dec = self.dec
            items = [v if type(v) in JSON_SCALARS else dec(v) for v in value]
            self.depth -= 1
            return items
        return value

    def descend(self) -> None:
        self.depth += 1
        if self.depth > self.codec.max_depth:
            raise DecodeError(f"encoded data nests deeper than {self.codec.max_depth} levels")

    def tag(self, tag: str, body: Any) -> Any:
        handler = _TAGS.get(tag)
        if handler is None:
            raise DecodeError(f"unknown tag {tag!r}")
        try:
            return handler(self, body)
        except (DecodeError, ChainValidationError):
            raise
        except Exception as exc:
            raise DecodeError(f"malformed {tag} value: {exc}") from exc

    # -- identity ----------------------------------------------------------------------------

    def ref(self, body: Any) -> Any:
        number = _expect(body, int, "$ref")
        if number not in self.refs:
            raise DecodeError(f"$ref {number} names no earlier $id")
        found = self.refs[number]
        if type(found) is _Pending:
            raise DecodeError(f"$ref {number} points into an object that cannot hold a cycle")
        return found

    def identified(self, body: Any) -> Any:
        if type(body) is not list or len(body) != 2 or type(body[0]) is not int:
            raise DecodeError("$id takes [number, value]")
        number, inner = body
        if number in self.refs:
            raise DecodeError(f"$id {number} appears twice")
        # Mutable containers exist before their contents, so cycles through them resolve.
        kind = type(inner)
        if kind is list:
            items: list[Any] = []
            self.refs[number] = items
            items.extend(self.dec(inner))
            return items
        if kind is dict and len(inner) == 1 and next(iter(inner)) in _PRECREATED:
            ((tag, tagged),) = inner.items()
            return _PRECREATED[tag](self, number, tagged)
        if kind is dict and not (len(inner) == 1 and next(iter(inner))[:1] == "$"):
            mapping: dict[str, Any] = {}
            self.refs[number] = mapping
            mapping.update(self.dec(inner))
            return mapping
        self.refs[number] = _Pending()
        value = self.dec(inner)
        self.refs[number] = value
        return value

    def dict_into(self, number: int, pairs: Any) -> dict[Any, Any]:
        mapping: dict[Any, Any] = {}
        self.refs[number] = mapping
        mapping.update(self.pairs(pairs))
        return mapping

    def obj_into(self, number: int, body: Any) -> Any:
        cls, state = self.registered(body)
        if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
            self.refs[number] = _Pending()
            value = self.build(cls, state)
            self.refs[number] = value
            return value
        instance = cls.__new__(cls)
        self.refs[number] = instance
        return self.fill_dataclass(instance, state)

    def chain_into(self, number: int, body: Any) -> OperationChain:
        self.refs[number] = _Pending()
        chain = OperationChain._build(self.ops(body, "$chain"))
        self.refs[number] = chain
        return chain

    # -- tagged values -----------------------------------------------------------------------

    def pairs(self, body: Any) -> dict[Any, Any]:
        if type(body) is not list:
            raise DecodeError("$dict takes a list of [key, value] pairs")
        self.descend()
        out: dict[Any, Any] = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise DecodeError("$dict takes a list of [key, value] pairs")
            key = self.dec(pair[0])
            try:
                out[key] = self.dec(pair[1])
            except TypeError as exc:
                raise DecodeError(f"$dict key of type {type(key).__name__} is unhashable") from exc
        self.depth -= 1
        return out

    def sequence(self, body: Any, tag: str) -> list[Any]:
        if type(body) is not list:
            raise DecodeError(f"{tag} takes a list")
        items: list[Any] = self.dec(body)
        return items

    def registered(self, body: Any) -> tuple[type[Any], dict[str, Any]]:
        if type(body) is not list or len(body) != 2 or type(body[0]) is not str:
            raise DecodeError("$obj takes [type name, fields]")
        name, state = body
        cls = self.codec.registry.type_named(name)
        if cls is None:
            raise DecodeError(f"$obj names the unregistered type {name!r}")
        if type(state) is not dict:
            raise DecodeError(f"$obj fields of {name!r} must be an object")
        return cls, state

    def build(self, cls: type[Any], state: dict[str, Any]) -> Any:
        fields = self.dec(state)
        if issubclass(cls, BaseModel):
            try:
                return cls.model_validate(fields)
            except Exception as exc:
                raise DecodeError(f"invalid fields for {cls.__qualname__}: {exc}") from exc
        raise DecodeError(f"$obj cannot rebuild {cls.__qualname__}")

    def fill_dataclass(self, instance: Any, state: dict[str, Any]) -> Any:
        fields = dataclass_fields(type(instance))
        unknown = state.keys() - fields.keys()
        if unknown:
            raise DecodeError(f"{type(instance).__qualname__} has no fields {sorted(unknown)}")
        self.descend()
        for name, spec in fields.items():
            if name in state:
                value = self.dec(state[name])
            elif spec.default is not dataclasses.MISSING:
                value = spec.default
            elif spec.default_factory is not dataclasses.MISSING:
                value = spec.default_factory()
            else:
                raise DecodeError(f"{type(instance).__qualname__} is missing the field {name!r}")
            object.__setattr__(instance, name, value)
        self.depth -= 1
        return instance

    def obj(self, body: Any) -> Any:
        cls, state = self.registered(body)
        if dataclasses.is_dataclass(cls):
            return self.fill_dataclass(cls.__new__(cls), state)
        return self.build(cls, state)

    def enum_member(self, body: Any) -> Any:
        if type(body) is not list or len(body) != 2 or type(body[1]) is not str:
            raise DecodeError("$enum takes [type name, member name]")
        cls = self.codec.registry.type_named(_expect(body[0], str, "$enum"))
        if cls is None or not issubclass(cls, enum.Enum):
            raise DecodeError(f"$enum names the unregistered enum {body[0]!r}")
        try:
            return cls[body[1]]
        except KeyError:
            raise DecodeError(f"{cls.__qualname__} has no member {body[1]!r}") from None

    def exception(self, body: Any) -> BaseException:
        if type(body) is not dict:
            raise DecodeError("$exc takes an object")
        name = _expect(body.get("type"), str, "$exc type")
        message = _expect(body.get("message", ""), str, "$exc message")
        remote_tb = body.get("traceback")
        if remote_tb is not None:
            remote_tb = _expect(remote_tb, str, "$exc traceback")
        args = body.get("args")
        cls = SAFE_EXCEPTIONS.get(name) or self.codec.registry.type_named(name)
        rebuilt: BaseException | None = None
        if args is not None and cls is not None and issubclass(cls, BaseException):
            try:
                rebuilt = cls(*self.sequence(args, "$exc args"))
            except Exception:
                rebuilt = None
        if rebuilt is None:
            return RemoteError(name, message, remote_tb)
        if remote_tb:
            rebuilt.add_note(f"Remote traceback:\n{remote_tb}")
        return rebuilt

    def unpickle(self, body: Any) -> Any:
        if not self.codec.trusted:
            raise SignatureError("pickle data is refused: only a trusted codec reads it")
        if type(body) is not list or len(body) != 2 or type(body[0]) is not str:
            raise DecodeError("$pickle takes [base64 data, signature]")
        blob = base64.b64decode(body[0], validate=True)
        key = self.codec.signing_key
        if key is not None:
            expected = hmac.new(key, blob, hashlib.sha256).hexdigest()
            if type(body[1]) is not str or not hmac.compare_digest(expected, body[1]):
                raise SignatureError("pickle data failed its HMAC signature check")
        elif body[1] is not None:
            raise SignatureError("signed pickle data, but this codec has no signing key")
        import cloudpickle  # on first use: only trusted codecs need it, and it is slow to load

        return cloudpickle.loads(blob)

    # -- chains ------------------------------------------------------------------------------

    def ops(self, data: Any, where: str) -> tuple[Operation, ...]:
        if type(data) is not list:
            raise ChainValidationError(f"{where}: ops must be a list")
        self.depth += 1
        if self.depth > self.codec.max_depth:
            raise DecodeError(f"encoded data nests deeper than {self.codec.max_depth} levels")
        ops: list[Operation] = []
        append = ops.append
        for op in data:
            # The two commonest shapes, inlined: a read of a name seen before, and a call
            # with both argument keys (what encode() writes). ``op`` does everything else.
            if type(op) is dict:
                kind = op.get("op")
                if kind == "get":
                    name = op.get("name")
                    if len(op) == 2 and type(name) is str and name:
                        known = _known_get(name)
                        if known is not None:
                            append(known)
                            continue
                elif kind == "call" and len(op) == 3:
                    args, kwargs = op.get("args"), op.get("kwargs")
                    if type(args) is list and type(kwargs) is dict:
                        append(self.call(args, kwargs))
                        continue
            append(self.op(op, where, len(ops)))
        self.depth -= 1
        return tuple(ops)

    def call(self, args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any]) -> Operation:
        """A call operation from its well-formed ``args`` and ``kwargs``."""
        if not args and not kwargs:
            return NO_ARGUMENTS
        values: list[Any] = []
        append = values.append
        for arg in args:
            kind = type(arg)
            if kind in JSON_SCALARS:
                append(arg)
            elif kind is dict and len(arg) == 1 and "$chain" in arg:
                # A nested chain, as pipelined calls send: what ``dec`` does, one call sooner.
                append(_build_chain(self.ops(arg["$chain"], "$chain")))
            else:
                append(self.dec(arg))
        dec = self.dec
        return call_op(
            tuple(values),
            {k: v if type(v) in JSON_SCALARS else dec(v) for k, v in kwargs.items()}
            if kwargs
            else {},
        )

    def op(self, data: Any, where: str, index: int) -> Operation:
        """One operation; the fast path accepts well-formed ones, ``op_error`` explains others."""
        if type(data) is dict:
            kind = data.get("op")
            if kind == "get":
                name = data.get("name")
                if len(data) == 2 and type(name) is str and name:
                    return GET_OPS[name]
            elif kind == "call":
                args = data.get("args", ())
                kwargs = data.get("kwargs", _NO_KWARGS)
                if (
                    type(args) in (list, tuple)
                    and type(kwargs) is dict
                    and len(data) == 1 + ("args" in data) + ("kwargs" in data)
                ):
                    return self.call(args, kwargs)
            elif kind == "item" and len(data) == 2 and "key" in data:
                return ItemOp(self.dec(data["key"]))
        raise _op_error(data, f"{where}.ops[{index}]")


_NO_KWARGS: dict[str, Any] = {}
_known_get = GET_OPS.get  # a plain dict lookup: no GetOp is made for a name never seen
_build_chain = OperationChain._build


def _op_error(data: Any, where: str) -> ChainValidationError:
    if type(data) is not dict:
        return ChainValidationError(f"{where}: an operation must be an object")
    kind = data.get("op")
    if kind not in ("get", "item", "call"):
        return ChainValidationError(f"{where}: 'op' must be 'get', 'item' or 'call'")
    if kind == "get" and (type(data.get("name")) is not str or not data["name"]):
        return ChainValidationError(f"{where}: 'name' must be a non-empty string")
    if kind == "call" and type(data.get("args", [])) is not list:
        return ChainValidationError(f"{where}: 'args' must be a list")
    if kind == "call" and type(data.get("kwargs", {})) is not dict:
        return ChainValidationError(f"{where}: 'kwargs' must be an object")
    allowed = {"get": ["name"], "item": ["key"], "call": ["args", "kwargs"]}[kind]
    return ChainValidationError(
        f"{where}: a {kind!r} operation takes the keys {['op', *allowed]}, got {sorted(data)}"
    )


def _expect(value: Any, kind: type, where: str) -> Any:
    if type(value) is not kind:
        raise DecodeError(f"{where} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _b64(body: Any) -> bytes:
    return base64.b64decode(_expect(body, str, "base64 data"), validate=True)


def _zoned(parse: Callable[[str], Any], body: Any) -> Any:
    if type(body) is str:
        return parse(body)
    if type(body) is not list or len(body) != 3:
        raise DecodeError("a zoned time takes [iso text, zone name or null, fold]")
    text, zone, fold = body
    value = parse(_expect(text, str, "iso text"))
    if zone is not None:
        value = value.replace(tzinfo=ZoneInfo(_expect(zone, str, "zone name")))
    if fold not in (0, 1):
        raise DecodeError("fold must be 0 or 1")
    return value.replace(fold=fold)


def _int(body: Any) -> int:
    text = _expect(body, str, "$int")
    if not text or text.lstrip("-").strip("0123456789abcdef"):
        raise DecodeError("$int takes hexadecimal digits")
    return int(text, 16)


def _float(body: Any) -> float:
    if body not in ("nan", "inf", "-inf"):
        raise DecodeError("$float takes 'nan', 'inf' or '-inf'")
    return float(body)


def _decimal(body: Any) -> Decimal:
    try:
        return Decimal(_expect(body, str, "$decimal"))
    except InvalidOperation:
        raise DecodeError(f"invalid $decimal {body!r}") from None


def _timedelta(body: Any) -> dt.timedelta:
    if type(body) is not list or len(body) != 3 or any(type(x) is not int for x in body):
        raise DecodeError("$timedelta takes [days, seconds, microseconds]")
    return dt.timedelta(days=body[0], seconds=body[1], microseconds=body[2])


def _odd_str(body: Any) -> str:
    text: str = _b64(body).decode("utf-8", "surrogatepass")
    return text


def _marker(body: Any) -> Marker:
    if body not in ("result", "error"):
        raise DecodeError("$marker takes 'result' or 'error'")
    return Marker(body)


def flat_chain(ops: Any) -> OperationChain | None:
    """The chain ``[{"op": "get", ...}, {"op": "call", ...}]`` encodes, when its arguments are
    all JSON scalars and markers, as ``Decoder.dec`` would build it; None for anything else.

    Most stored handler chains have this shape (``c.handle(1, c.result)``), and every firing
    decodes one: this skips the decoder's general dispatch. Anything unusual, malformed
    input included, is left to the decoder and its errors.
    """
    if type(ops) is not list or len(ops) != 2:
        return None
    get, call = ops
    if type(get) is not dict or type(call) is not dict or len(get) != 2 or len(call) != 3:
        return None
    name, args, kwargs = get.get("name"), call.get("args"), call.get("kwargs")
    if (
        get.get("op") != "get"
        or call.get("op") != "call"
        or type(name) is not str
        or not name
        or type(args) is not list
        or kwargs != {}
    ):
        return None
    known = _known_get(name)
    if known is None:
        return None
    values: list[Any] = []
    for arg in args:
        if type(arg) in JSON_SCALARS:
            values.append(arg)
        elif type(arg) is dict and len(arg) == 1 and arg.get("$marker") in ("result", "error"):
            values.append(Marker(arg["$marker"]))
        else:
            return None
    return _build_chain((known, call_op(tuple(values), {}) if values else NO_ARGUMENTS))


_TAGS: dict[str, Callable[[Decoder, Any], Any]] = {
    "$ref": Decoder.ref,
    "$id": Decoder.identified,
    "$dict": Decoder.pairs,
    "$tuple": lambda d, b: tuple(d.sequence(b, "$tuple")),
    "$set": lambda d, b: set(d.sequence(b, "$set")),
    "$frozenset": lambda d, b: frozenset(d.sequence(b, "$frozenset")),
    "$bytes": lambda d, b: _b64(b),
    "$bytearray": lambda d, b: bytearray(_b64(b)),
    "$str": lambda d, b: _odd_str(b),
    "$int": lambda d, b: _int(b),
    "$float": lambda d, b: _float(b),
    "$datetime": lambda d, b: _zoned(dt.datetime.fromisoformat, b),
    "$date": lambda d, b: dt.date.fromisoformat(_expect(b, str, "$date")),
    "$time": lambda d, b: _zoned(dt.time.fromisoformat, b),
    "$timedelta": lambda d, b: _timedelta(b),
    "$decimal": lambda d, b: _decimal(b),
    "$uuid": lambda d, b: uuid.UUID(_expect(b, str, "$uuid")),
    "$enum": Decoder.enum_member,
    "$obj": Decoder.obj,
    "$exc": Decoder.exception,
    "$pickle": Decoder.unpickle,
    "$marker": lambda d, b: _marker(b),
    "$chain": lambda d, b: OperationChain._build(d.ops(b, "$chain")),
}

_PRECREATED: dict[str, Callable[[Decoder, int, Any], Any]] = {
    "$dict": Decoder.dict_into,
    "$obj": Decoder.obj_into,
    "$chain": Decoder.chain_into,
}
