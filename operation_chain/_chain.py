"""The operation-chain model: what a proxy recorded, as data.

A chain is a sequence of operations applied to a target, left to right: ``get`` reads an
attribute, ``item`` subscripts, ``call`` calls what the previous operations produced.
Arguments are ordinary Python values; they may contain nested chains (run against the same
target first) and the ``RESULT``/``ERROR`` markers (replaced by injected values).

The JSON form is versioned and produced by the value codec, so arguments keep their types::

    {"v": 1, "ops": [{"op": "get", "name": "combine"},
                     {"op": "call", "args": [{"$chain": [...]}, {"$marker": "result"}],
                      "kwargs": {}}]}
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    ValidationInfo,
    model_serializer,
)
from pydantic import model_validator as _model_validator

from ._markers import Marker

if TYPE_CHECKING:
    from typing import Self

    from ._policy import ExecutionPolicy

CHAIN_VERSION = 1
"""The version written in the ``"v"`` field of every chain's JSON form."""


@dataclass(frozen=True, slots=True)
class GetOp:
    """Read the attribute ``name`` of the current value."""

    name: str


@dataclass(frozen=True, slots=True)
class ItemOp:
    """Subscript the current value with ``key`` (``value[key]``)."""

    key: Any


@dataclass(frozen=True, slots=True)
class CallOp:
    """Call the current value with ``args`` and ``kwargs``."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


Operation = GetOp | ItemOp | CallOp

_set_args = CallOp.__dict__["args"].__set__
_set_kwargs = CallOp.__dict__["kwargs"].__set__


def call_op(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> CallOp:
    """``CallOp(args, kwargs)`` for hot paths: the frozen dataclass constructor costs three
    times as much, and every recorded or decoded call builds one."""
    op: CallOp = object.__new__(CallOp)
    _set_args(op, args)
    _set_kwargs(op, kwargs)
    return op


NO_ARGUMENTS: CallOp = CallOp((), MappingProxyType({}))
"""The call with no arguments, shared: ``p.refresh()`` is common and needs no new object."""


class _GetOpCache(dict[str, GetOp]):
    """``GET_OPS[name]`` is the ``GetOp`` for ``name``, shared while the cache has room.

    Ops are immutable, so one per name serves every chain; a hit is a single dict lookup.
    Decoded names come from peers, so the cache stays bounded.
    """

    limit = 4096

    def __missing__(self, name: str) -> GetOp:
        op = GetOp(name)
        if len(self) < self.limit:
            self[name] = op
        return op


GET_OPS = _GetOpCache()


class OperationChain(BaseModel):
    """An immutable, recorded sequence of operations, with a versioned JSON form.

    Build chains with an ``OperationProxy`` and ``chain_of``; read them from JSON with
    ``OperationChain.model_validate_json`` (or ``from_json``); write them with
    ``model_dump_json`` (or ``to_json``). ``str(chain)`` renders readable Python for logs.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, extra="forbid")

    VERSION: ClassVar[int] = CHAIN_VERSION

    ops: tuple[Operation, ...] = ()

    @classmethod
    def _build(cls, ops: tuple[Operation, ...]) -> Self:
        """Construct without validation: for ops this package built or already checked.

        Pydantic's ``model_construct`` costs several microseconds; chains are built on every
        recorded call and every decoded message, so this sets the same instance slots directly.
        """
        chain = _new(cls)
        _set_dict(chain, {"ops": ops})
        _set_fields_set(chain, _OPS_FIELD_SET)
        _set_extra(chain, None)
        _set_private(chain, None)
        return chain

    @_model_validator(mode="wrap")
    @classmethod
    def _validate(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo
    ) -> Self:
        # JSON input, or a mapping with "v", is the JSON form, whose arguments are
        # codec-encoded; anything else is Python construction (``OperationChain(ops=...)``).
        # In JSON mode the data comes straight from pydantic's JSON parser, so only JSON
        # types can be in it and the codec need not scan it for others.
        if info.mode == "json":
            return _codec.decode_chain(data, chain_type=cls, parsed_json=True)
        if isinstance(data, Mapping) and "v" in data:
            return _codec.decode_chain(data, chain_type=cls)
        return handler(data)

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **options: Any) -> Self:
        """Parse the JSON form; the same as ``from_json`` (pydantic's options do not apply).

        Overridden so that malformed JSON raises ``DecodeError`` like every other bad chain,
        instead of pydantic's ``ValidationError``.
        """
        return cls.from_json(json_data)

    @model_serializer(mode="plain")
    def _serialize(self) -> dict[str, Any]:
        return _codec.encode_chain(self)

    @classmethod
    def from_json(
        cls, data: str | bytes | bytearray, *, policy: ExecutionPolicy | None = None
    ) -> Self:
        """Parse the JSON form with the safe codec.

        Input larger than the policy's ``max_encoded_size`` is refused before parsing.

        Raises:
            ChainValidationError: the JSON does not describe a chain.
            DecodeError: the JSON, or an argument's encoding, is malformed.
            ChainLimitError: the input is over the size limit.
        """
        return _codec.loads_chain(data, chain_type=cls, policy=policy)

    @classmethod
    def from_parsed_json(cls, data: Any) -> Self:
        """Read the JSON form from what a JSON parser just returned for it.

        ``OperationChain.model_validate`` accepts any Python data and first scans it for
        values JSON cannot hold; a tree that came straight out of ``json.loads``, orjson or
        pydantic's parser holds none, so this skips that scan and is faster. Pass nothing
        else: objects that are not JSON types would go through unchecked.

        Raises:
            ChainValidationError: the data does not describe a chain.
            DecodeError: an argument's encoding is malformed.
        """
        return _codec.decode_chain(data, chain_type=cls, parsed_json=True)

    def to_json(self) -> bytes:
        """The versioned JSON form as UTF-8 bytes (safe codec)."""
        return _codec.dumps_chain(self)

    def __str__(self) -> str:
        return render(self)

    def __repr__(self) -> str:
        return f"OperationChain({render(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OperationChain):
            return NotImplemented
        return self.ops == other.ops

    # Arguments may be unhashable (lists, dicts), so chains are too, like a list of calls.
    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.ops)


_setattr = object.__setattr__
_new = object.__new__
_OPS_FIELD_SET = frozenset({"ops"})


def _slot_setter(name: str) -> Callable[[Any, Any], None]:
    """The setter of one of pydantic's instance slots (``__dict__`` among them), called
    directly (cheaper than ``object.__setattr__``); a plain setattr if a pydantic release
    stops using slots."""
    descriptor = vars(BaseModel).get(name)
    setter = getattr(descriptor, "__set__", None)
    if setter is not None:
        return cast("Callable[[Any, Any], None]", setter)
    return lambda obj, value: _setattr(obj, name, value)


_set_dict = _slot_setter("__dict__")
_set_fields_set = _slot_setter("__pydantic_fields_set__")
_set_extra = _slot_setter("__pydantic_extra__")
_set_private = _slot_setter("__pydantic_private__")

_MAX_VALUE_TEXT = 60


class _ValueRepr(reprlib.Repr):
    """Short reprs for argument values, rendering nested chains and markers inline.

    Nested chains share reprlib's level budget, so the text stays short however deep, shared
    or self-containing the arguments are. They must not go through ``repr()``, which would
    start a fresh budget and quote each level again.
    """

    def repr_OperationChain(self, chain: OperationChain, level: int) -> str:
        return _render(chain, level - 1) or "<target>"

    def repr_Marker(self, marker: Marker, level: int) -> str:
        return str(marker)


_value_repr = _ValueRepr()
_value_repr.maxstring = _MAX_VALUE_TEXT
_value_repr.maxother = _MAX_VALUE_TEXT


def render(chain: OperationChain) -> str:
    """Render a chain as readable Python: ``combine(get('a'), <result>)``.

    Long argument values and deep nesting are shortened (``...``), so the text suits logs and
    inspection tables; it is not meant to be parsed back.
    """
    return _render(chain, _value_repr.maxlevel)


def _render(chain: OperationChain, level: int) -> str:
    if level <= 0:
        return "..."
    parts: list[str] = []
    for op in chain.ops:
        if type(op) is GetOp:
            parts.append(f".{op.name}" if parts else op.name)
        elif type(op) is ItemOp:
            parts.append(f"[{_value_repr.repr1(op.key, level)}]")
        else:
            assert type(op) is CallOp
            rendered = [_value_text(a, level) for a in op.args]
            rendered += [f"{k}={_value_text(v, level)}" for k, v in op.kwargs.items()]
            parts.append(f"({', '.join(rendered)})")
    return "".join(parts)


def _value_text(value: Any, level: int) -> str:
    """``_value_repr.repr1(value, level)``, without reprlib's dispatch for the scalars that
    most arguments are (every stored continuation renders its chain)."""
    kind = type(value)
    if kind is int or kind is str:
        text = repr(value)
        if len(text) <= (_value_repr.maxlong if kind is int else _value_repr.maxstring):
            return text
    elif kind is float or kind is bool or value is None:
        return repr(value)
    elif kind is Marker:
        return str(value)
    return _value_repr.repr1(value, level)


# The codec reads and writes chains, so it imports this module; importing it last, once every
# name it needs exists, lets the methods above call it without a per-call import.
from . import _codec  # noqa: E402
