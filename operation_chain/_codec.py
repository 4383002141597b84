"""The value codec: a structured-clone model of Python values over JSON.

Two modes:

- **safe** (the default, and the only mode for data from a network peer): JSON-native values,
  the extra builtin types listed in ``docs/operation-chains.md``, registered user types,
  exceptions, chains and markers. Nothing else encodes, and decoding never runs pickle.
- **trusted** (storage this process wrote): anything else falls back to cloudpickle; with a
  ``signing_key`` every blob is HMAC-signed and a blob whose signature fails is refused.

``encode``/``decode`` convert to and from a JSON-compatible tree, for embedding in larger
documents; ``dumps``/``loads`` convert to and from UTF-8 JSON bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from typing import Any, Final, TypeVar

import orjson

from ._chain import CHAIN_VERSION, OperationChain
from ._decode import JSON_SCALARS, Decoder, flat_chain, scan
from ._encode import INT_MAX, INT_MIN, Encoder, Unsupported, plain_ops
from ._errors import ChainValidationError, CodecError, DecodeError
from ._policy import DEFAULT_POLICY, ExecutionPolicy
from ._registry import DEFAULT_REGISTRY, TypeRegistry, dataclass_fields

ChainT = TypeVar("ChainT", bound=OperationChain)

DEFAULT_MAX_DEPTH = 100
"""Deeper values are refused: deep recursion would exhaust the interpreter's stack, and JSON
writers (orjson included) refuse documents nested past a few hundred levels."""


class Codec:
    """Encodes and decodes values; one instance per configuration, safe to share.

    Args:
        trusted: fall back to cloudpickle for types the safe mode refuses. Only for data
            this process wrote itself; never for data from a peer.
        signing_key: HMAC key for pickle blobs (trusted mode). With a key, unsigned or
            badly signed blobs are refused.
        registry: the registered user types; defaults to the one ``register_type`` fills.
        tracebacks: include the formatted traceback of encoded exceptions.
        max_depth: the deepest nesting accepted either way.
    """

    __slots__ = ("max_depth", "registry", "signing_key", "tracebacks", "trusted")

    def __init__(
        self,
        *,
        trusted: bool = False,
        signing_key: bytes | None = None,
        registry: TypeRegistry | None = None,
        tracebacks: bool = True,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if signing_key is not None and not trusted:
            raise ValueError("signing_key applies to trusted mode only; pass trusted=True")
        if signing_key is not None and (not isinstance(signing_key, bytes) or not signing_key):
            raise ValueError("signing_key must be non-empty bytes")
        if max_depth < 1:
            raise ValueError("max_depth must be at least 1")
        self.trusted = trusted
        self.signing_key = signing_key
        self.registry = registry if registry is not None else DEFAULT_REGISTRY
        self.tracebacks = tracebacks
        self.max_depth = max_depth

    def __repr__(self) -> str:
        mode = "trusted" if self.trusted else "safe"
        signed = ", signed" if self.signing_key else ""
        return f"Codec({mode}{signed})"

    def encode(self, value: Any) -> Any:
        """Encode to a JSON-compatible tree. Raises ``UnsupportedTypeError`` with a path."""
        # Shortcuts for the commonest values on a wire (a call's result, a call): they share
        # nothing, so they need no Encoder and its identity memo.
        kind = type(value)
        if kind is int:
            if INT_MIN <= value <= INT_MAX:
                return value
        elif kind is str:
            if value.isascii():
                return value
        elif value is None or kind is bool:
            return value
        elif kind is OperationChain:
            ops = plain_ops(value.ops, self.max_depth)
            if ops is not None:
                return {"$chain": ops}
        elif kind is tuple:
            if all(_encodes_to_itself(item) for item in value):
                return {"$tuple": list(value)}  # a stored outcome, ("ok", 42), say
        else:
            name = self.registry.name_of(kind)
            if name is not None and _plain_record_type(kind):
                tree = self._plain_record(value, name)
                if tree is not None:
                    return tree
        return self._run(value, Encoder.enc)

    def _plain_record(self, value: Any, name: str) -> Any:
        """The tree of a registered dataclass whose fields are plain scalars and at most
        one plain chain (a stored remote call, say), as the ``Encoder`` would write it; None
        for anything else, which the ``Encoder`` then takes."""
        state: dict[str, Any] = {}
        chained = False
        for field in dataclass_fields(type(value)):
            item = getattr(value, field)
            if type(item) is OperationChain and not chained and self.max_depth >= _RECORD_DEPTH:
                ops = plain_ops(item.ops, self.max_depth - 1)
                if ops is None:
                    return None
                item, chained = {"$chain": ops}, True
            elif not _encodes_to_itself(item):
                return None
            state[field] = item
        return {"$obj": [name, state]}

    def decode(self, data: Any) -> Any:
        """Decode a tree made by ``encode`` (or parsed from ``dumps`` output)."""
        return self._decode(data, parsed_json=False)

    def _decode(self, tree: Any, *, parsed_json: bool) -> Any:
        """Decode a tree; one straight from a JSON parser needs no check of its types."""
        try:
            if not parsed_json and not scan(tree, self.max_depth):
                return tree
            return Decoder(self).dec(tree)
        except RecursionError:
            raise _too_deep() from None

    def dumps(self, value: Any) -> bytes:
        """Encode to UTF-8 JSON bytes."""
        if _is_plain(value, self.max_depth, set()):
            try:
                return _detached(orjson.dumps(value))
            except orjson.JSONEncodeError:
                pass  # a lone surrogate in some string: the full encoder tags it
        return _detached(_write_json(self.encode(value)))

    def loads(self, data: bytes | bytearray | memoryview | str) -> Any:
        """Decode UTF-8 JSON bytes made by ``dumps``. Raises ``DecodeError`` on bad input."""
        tree = parse_json(data)
        # The shortcuts first: a one-key object with a tag's key holds a tag anyway, so the
        # text need not be searched for one.
        if type(tree) is dict and len(tree) == 1:
            if "$chain" in tree:
                chain = flat_chain(tree["$chain"])
                if chain is not None:
                    return chain
            elif "$tuple" in tree:
                items = tree["$tuple"]
                if type(items) is list and all(type(item) in JSON_SCALARS for item in items):
                    return tuple(items)
            elif "$obj" in tree and self.max_depth >= _RECORD_DEPTH:
                record = self._plain_record_of(tree["$obj"])
                if record is not None:
                    return record
        if not _may_hold_tags(data):
            return tree  # parsed JSON holds only JSON types, and no object is a tag
        return self._decode(tree, parsed_json=True)

    def _plain_record_of(self, body: Any) -> Any:
        """The registered dataclass a ``$obj`` tree holds when every field is there, as a
        JSON scalar or a flat chain, as the ``Decoder`` would build it; None for anything
        else (errors included), which the ``Decoder`` then takes."""
        if type(body) is not list or len(body) != 2:
            return None
        name, state = body
        if type(name) is not str or type(state) is not dict:
            return None
        cls = self.registry.type_named(name)
        if cls is None or not _plain_record_type(cls):
            return None
        fields = dataclass_fields(cls)
        if len(state) != len(fields) or state.keys() != fields.keys():
            return None
        maker: Any = cls
        record = maker.__new__(maker)  # as Decoder.obj makes it: no __init__ runs
        for field, item in state.items():
            kind = type(item)
            if kind is dict:
                if len(item) != 1 or "$chain" not in item:
                    return None
                item = flat_chain(item["$chain"])
                if item is None:
                    return None
            elif kind is list:
                return None
            object.__setattr__(record, field, item)
        return record

    def _run(self, value: Any, method: Any) -> Any:
        encoder = Encoder(self)
        try:
            tree = method(encoder, value)
            if not encoder.shared:
                return tree
            # Shared objects were found: encode again, wrapping their first visits.
            return method(Encoder(self, encoder.shared), value)
        except Unsupported as exc:
            raise exc.public() from None
        except RecursionError:
            raise CodecError("value nests too deeply for the interpreter's stack") from None


_TAG_OPENING = re.compile(r'\{\s*"(?:\$|\\u0024)')
"""How any tag begins in JSON text: an object whose first key starts with ``$``. Inside a
JSON string a quote is always escaped, so this cannot match string content."""


def _may_hold_tags(data: bytes | bytearray | memoryview | str) -> bool:
    if isinstance(data, str):
        return _TAG_OPENING.search(data) is not None
    return _TAG_OPENING_BYTES.search(data) is not None


_TAG_OPENING_BYTES = re.compile(_TAG_OPENING.pattern.encode())


def _too_deep() -> DecodeError:
    return DecodeError("encoded data nests too deeply for the interpreter's stack")


def _write_json(tree: Any) -> bytes:
    try:
        return orjson.dumps(tree)
    except orjson.JSONEncodeError as exc:
        # Tags add JSON levels (a tuple is two), so a value within max_depth can still
        # exceed the JSON writer's own nesting limit.
        raise CodecError(f"the encoded value cannot be written as JSON: {exc}") from None


_RECORD_DEPTH: Final = 8
"""The least ``max_depth`` at which a plain record takes the shortcuts: well within what
the general encoder and decoder allow for its few levels."""


def _encodes_to_itself(item: Any) -> bool:
    """Whether a scalar is its own encoding (what the Encoder passes through unchanged)."""
    kind = type(item)
    if kind is str:
        return bool(item.isascii())
    if kind is int:
        return bool(INT_MIN <= item <= INT_MAX)
    return item is None or kind is bool


def _plain_record_type(cls: Any) -> bool:
    """Whether the shortcuts may encode and decode instances of ``cls`` (a registered
    type, exactly: the shortcuts read only its own fields): a dataclass that the general
    encoder also writes as ``$obj``, so not an exception or an enum."""
    known = _PLAIN_RECORD_TYPES.get(cls)
    if known is None:
        known = _PLAIN_RECORD_TYPES[cls] = (
            isinstance(cls, type)
            and dataclasses.is_dataclass(cls)
            and not issubclass(cls, (BaseException, enum.Enum))
        )
    return known


_PLAIN_RECORD_TYPES: dict[Any, bool] = {}

_DETACH_LIMIT: Final = 1 << 16


def _detached(data: bytes) -> bytes:
    """``data`` copied into a bytes object of its own size.

    orjson writes into a 1 KiB buffer and shrinks it in place when done. Encoded values are
    kept (a turn's writes and new continuations until their commit, an actor's state for as
    long as it is active), and kept shrunken buffers stop the allocator from reusing memory:
    each later encoding then cost about 1.6 µs instead of 0.15 µs (measured with 20,000
    small values kept, as a busy system keeps them). A copy costs a fraction of that and
    frees the buffer at once, for the next encoding to reuse. Past 64 KiB the copy costs
    more than it saves. (A join of two parts always builds a new object; ``bytes(data)``
    would return ``data`` itself.)
    """
    return b"".join((data, b"")) if len(data) <= _DETACH_LIMIT else data


def parse_json(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON text, mapping every parser failure to ``DecodeError``."""
    if not isinstance(data, (bytes, bytearray, memoryview, str)):
        raise DecodeError(f"JSON input must be bytes or str, not {type(data).__name__}")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc}") from None


def _is_plain(value: Any, limit: int, seen: set[int]) -> bool:
    """Whether ``value`` is JSON-native with no sharing, so that it encodes to itself.

    The hot path of ``dumps``: scalar checks are inlined, in the dict loop and again in the
    list loop, because a call per item (or a second pass over the keys) costs more than
    everything else here; measured with ``benchmarks/codec.py``.
    """
    kind = type(value)
    if kind is dict:
        if not limit or id(value) in seen:
            return False
        seen.add(id(value))
        if len(value) == 1:
            (key,) = value
            if type(key) is str and key[:1] == "$":
                return False
        for key, item in value.items():
            if type(key) is not str:
                return False
            kind = type(item)
            if kind is str or kind is bool or item is None:
                continue
            if kind is int:
                if INT_MIN <= item <= INT_MAX:
                    continue
            elif kind is float:
                if item - item == 0.0:  # false for nan and the infinities
                    continue
            elif (kind is dict or kind is list) and _is_plain(item, limit - 1, seen):
                continue
            return False
        return True
    if kind is list:
        if not limit or id(value) in seen:
            return False
        seen.add(id(value))
        for item in value:
            kind = type(item)
            if kind is str or kind is bool or item is None:
                continue
            if kind is int:
                if INT_MIN <= item <= INT_MAX:
                    continue
            elif kind is float:
                if item - item == 0.0:
                    continue
            elif (kind is dict or kind is list) and _is_plain(item, limit - 1, seen):
                continue
            return False
        return True
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        in_range: bool = INT_MIN <= value <= INT_MAX
        return in_range
    return kind is float and bool(value - value == 0.0)


SAFE_CODEC = Codec()
"""The codec every wire uses: safe mode, default registry."""


def encode(value: Any) -> Any:
    """Encode ``value`` with the safe codec to a JSON-compatible tree."""
    return SAFE_CODEC.encode(value)


def decode(data: Any) -> Any:
    """Decode a tree made by ``encode``, with the safe codec."""
    return SAFE_CODEC.decode(data)


def dumps(value: Any) -> bytes:
    """Encode ``value`` with the safe codec to UTF-8 JSON bytes."""
    return SAFE_CODEC.dumps(value)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode UTF-8 JSON bytes made by ``dumps``, with the safe codec."""
    return SAFE_CODEC.loads(data)


# -- chains: the versioned JSON form ---------------------------------------------------------


def encode_chain(chain: OperationChain, codec: Codec = SAFE_CODEC) -> dict[str, Any]:
    """The versioned JSON form of a chain, ``{"v": 1, "ops": [...]}``."""
    ops = plain_ops(chain.ops, codec.max_depth)
    if ops is None:
        ops = codec._run(chain, Encoder.ops)
    return {"v": CHAIN_VERSION, "ops": ops}


def decode_chain(
    data: Any,
    *,
    chain_type: type[ChainT] = OperationChain,  # type: ignore[assignment]
    codec: Codec = SAFE_CODEC,
    parsed_json: bool = False,
) -> ChainT:
    """Read the versioned JSON form. Raises ``ChainValidationError`` or ``DecodeError``.

    ``parsed_json`` says ``data`` came straight from a JSON parser, so its types need no
    check; data from anywhere else is scanned first.
    """
    if type(data) is not dict and not isinstance(data, Mapping):
        raise ChainValidationError(f"a chain must be a JSON object, not {type(data).__name__}")
    version = data.get("v")
    if type(version) is not int or version != CHAIN_VERSION:
        raise ChainValidationError(
            f"unsupported chain version {version!r}; this library reads version {CHAIN_VERSION}"
        )
    if len(data) != 2:
        extra = sorted(set(data) - {"v", "ops"})
        raise ChainValidationError(f"a chain takes the keys 'v' and 'ops', not {extra}")
    ops = data.get("ops")
    try:
        if not parsed_json:
            scan(ops, codec.max_depth)
        return chain_type._build(Decoder(codec).ops(ops, "$"))
    except RecursionError:
        raise _too_deep() from None


def dumps_chain(chain: OperationChain, codec: Codec = SAFE_CODEC) -> bytes:
    """The versioned JSON form as UTF-8 bytes."""
    return _write_json(encode_chain(chain, codec))


def loads_chain(
    data: str | bytes | bytearray,
    *,
    chain_type: type[ChainT] = OperationChain,  # type: ignore[assignment]
    policy: ExecutionPolicy | None = None,
    codec: Codec = SAFE_CODEC,
) -> ChainT:
    """Parse a chain from JSON bytes, refusing oversized input before parsing it."""
    (policy or DEFAULT_POLICY).check_encoded_size(len(data))
    return decode_chain(parse_json(data), chain_type=chain_type, codec=codec, parsed_json=True)
