"""The wire format: JSON envelopes around operation chains, validated with pydantic.

Every value inside an envelope (chain arguments, results, errors, downstream payloads) is
written by the safe codec of ``operation_chain``; the envelopes themselves are plain JSON.

**A batch** is what one round trip carries: the calls a client started in one event-loop
tick, for one actor, run by the server in list order::

    {"v": 1, "calls": [
        {"id": 0, "chain": {"v": 1, "ops": [{"op": "get", "name": "increment"},
                                            {"op": "call", "args": [], "kwargs": {}}]},
         "reply": false},
        {"id": 1, "chain": {"v": 1, "ops": [{"op": "get", "name": "add"},
                                            {"op": "call", "args": [
                                                {"$obj": ["rpc.ref", {"call": 0}]}, 10],
                                             "kwargs": {}}]}}
    ]}

``chain`` is the chain's versioned JSON form. ``reply`` (default true) says whether the
client wants the call's result; a call that only feeds others is sent with ``false``, so its
result (which may be a server object the codec cannot encode) never travels.

**Pipelining.** ``{"$obj": ["rpc.ref", {"call": N}]}`` (a ``CallRef``) anywhere in a chain's
arguments stands for the result of call ``N`` of the same batch, which must come earlier in
``calls``. The server runs call ``N`` once and substitutes its result; if call ``N`` raised,
every call that refers to it settles with that same error without running.

**The answer** to a batch, with HTTP status 200, has one entry per call sent with
``reply: true``, each settling on its own::

    {"results": [{"id": 1, "ok": 11}, {"id": 2, "error": {"$exc": {...}}}]}

**A refusal** (HTTP 4xx; nothing in the request ran) names a machine-readable ``code``, and
``calls`` when particular calls of the batch were refused (the client then re-sends the
others)::

    {"error": {"code": "chain_limit", "message": "call 3: ... 51 > 50 (max_operations)",
               "calls": [{"id": 3, "code": "chain_limit", "message": "..."}]}}

**HTTP:** ``POST {prefix}/{binding}/{instance}`` with a batch as the body.

**WebSocket:** one connection at ``{prefix}`` serves every binding and instance. Frames are
JSON text; each request carries an ``id`` chosen by the client, echoed in its reply::

    client -> server  {"type": "call", "id": 7, "binding": "counter", "instance": "a",
                       "batch": <batch>}
                      {"type": "subscribe", "id": 8, "client_id": "tab-1"}
                      {"type": "unsubscribe", "id": 9, "client_id": "tab-1"}
    server -> client  {"type": "reply", "id": 7, "status": 200, "body": <answer or refusal>}
                      {"type": "downstream", "binding": "room", "instance": "a",
                       "client_ids": ["tab-1"], "payload": <codec value>}

A frame the server cannot read gets a reply with status 400 (and ``"id": null`` when no id
could be read); the connection stays open. A refused WebSocket handshake is accepted and
closed at once with code 4401.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import from_json

from operation_chain import decode, register_type

from ._host import DownstreamMessage

if TYPE_CHECKING:
    from typing import Self

WIRE_VERSION: Final = 1

AUTH_CLOSE_CODE: Final = 4401
"""The WebSocket close code for a refused ``authenticate``, after HTTP's 401."""

# Machine-readable refusal codes and the HTTP status each is sent with.
MALFORMED_REQUEST: Final = "malformed_request"
INVALID_CHAIN: Final = "invalid_chain"
BAD_REFERENCE: Final = "bad_reference"
CHAIN_LIMIT: Final = "chain_limit"
CHAIN_REFUSED: Final = "chain_refused"
UNKNOWN_BINDING: Final = "unknown_binding"
UNAUTHENTICATED: Final = "unauthenticated"
REQUEST_TOO_LARGE: Final = "request_too_large"
NOT_FOUND: Final = "not_found"
METHOD_NOT_ALLOWED: Final = "method_not_allowed"
INTERNAL_ERROR: Final = "internal_error"

STATUS_OF: Final[dict[str, int]] = {
    MALFORMED_REQUEST: 400,
    INVALID_CHAIN: 400,
    BAD_REFERENCE: 400,
    CHAIN_LIMIT: 400,
    CHAIN_REFUSED: 403,
    UNKNOWN_BINDING: 404,
    UNAUTHENTICATED: 401,
    REQUEST_TOO_LARGE: 413,
    NOT_FOUND: 404,
    METHOD_NOT_ALLOWED: 405,
    INTERNAL_ERROR: 500,
}


@register_type(name="rpc.ref")
@dataclass(frozen=True, slots=True)
class CallRef:
    """In a chain's arguments: the result of the call with wire id ``call`` in the same batch.

    Registered with the codec under ``"rpc.ref"``. The codec rebuilds its fields without
    checking their types, so the server checks ``call`` before trusting it.
    """

    call: int

    made: ClassVar[int] = 0
    """How many were ever made. The server reads it before and after decoding a chain: when
    it is unchanged the chain holds none, and finding them needs no walk of its arguments."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        CallRef.made += 1
        # Not super(): the slots dataclass is a copy of this class, which breaks its cell.
        return object.__new__(cls)


_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)

_MAX_WIRE_ID: Final = 2**53  # the integers a JavaScript client can hold exactly
_MAX_NAME: Final = 1024
_MAX_KEY: Final = 200

WireId = Annotated[int, Field(ge=0, le=_MAX_WIRE_ID)]
Name = Annotated[str, Field(min_length=1, max_length=_MAX_NAME)]


IdempotencyKey = Annotated[str, Field(min_length=1, max_length=_MAX_KEY)]


class WireCall(BaseModel):
    """One call of a batch: a chain in its JSON form, whether its result is wanted, and an
    optional idempotency key (a host that has answered a call with the same key to the same
    actor answers again with the stored outcome instead of running it twice)."""

    model_config = _STRICT

    id: WireId
    chain: dict[str, Any]
    reply: bool = True
    key: IdempotencyKey | None = None


class Batch(BaseModel):
    """The calls of one round trip, for one actor, in the order they run."""

    model_config = _STRICT

    v: Literal[1]
    calls: list[WireCall] = Field(min_length=1)


class CallRefusal(BaseModel):
    """Why one call of a batch was refused."""

    model_config = ConfigDict(strict=True, extra="ignore")

    id: WireId
    code: str
    message: str


class Refusal(BaseModel):
    """A refused request: a machine-readable code, a message, and the refused calls if any."""

    model_config = ConfigDict(strict=True, extra="ignore")

    code: str
    message: str
    calls: list[CallRefusal] = Field(default_factory=list)


class RefusalBody(BaseModel):
    """The body of every 4xx answer: ``{"error": {...}}``."""

    model_config = ConfigDict(strict=True, extra="ignore")

    error: Refusal


class CallFrame(BaseModel):
    """WebSocket, client to server: run a batch against ``binding``/``instance``."""

    model_config = _STRICT

    type: Literal["call"]
    id: WireId
    binding: Name
    instance: Name
    batch: Batch


class SubscribeFrame(BaseModel):
    """WebSocket, client to server: deliver downstream messages for ``client_id`` here."""

    model_config = _STRICT

    type: Literal["subscribe", "unsubscribe"]
    id: WireId
    client_id: Name


ClientFrame = Annotated[CallFrame | SubscribeFrame, Field(discriminator="type")]
CLIENT_FRAME: Final[TypeAdapter[CallFrame | SubscribeFrame]] = TypeAdapter(ClientFrame)


class DownstreamFrame(BaseModel):
    """WebSocket, server to client: a message an actor sent to some of this socket's clients."""

    model_config = ConfigDict(strict=True, extra="ignore")

    type: Literal["downstream"]
    binding: str
    instance: str
    client_ids: list[str]
    payload: Any


WireCallFields = tuple[int, dict[str, Any], bool, str | None]
"""A call of a batch as the server uses it: ``(id, chain form, reply, idempotency key)``."""


def parse_json(data: str | bytes) -> Any:
    """Parse a request's JSON, keeping every integer an ``int``.

    orjson, the faster parser, reads an integer past 64 bits as a float, where pydantic's
    parser keeps it exact; so a text with a run of 19 digits or more goes to pydantic's.

    Raises:
        ValueError: the text is not valid JSON.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    # Every digit made a 0 (bytes.translate is far quicker than a regular expression here);
    # UTF-8 encodes other characters with bytes over 127, so none of them can join a run.
    if _NINETEEN_ZEROS in raw.translate(_DIGITS_TO_ZEROS):
        return from_json(data)
    return orjson.loads(data)


_DIGITS_TO_ZEROS: Final = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_ZEROS: Final = b"0" * 19


def read_calls(batch: Any) -> list[WireCallFields] | None:
    """The calls of a batch tree in the common, valid shape; ``None`` for any other tree.

    The hot path of every request, checked by hand: pydantic's ``Batch`` costs several
    microseconds per batch. It accepts only what ``Batch`` accepts too (exact JSON types,
    no extra keys), so whatever it declines goes to ``Batch``, which refuses it or reads
    the unusual forms, with the same error messages as before.
    """
    if type(batch) is not dict or len(batch) != 2:
        return None
    version, calls = batch.get("v"), batch.get("calls")
    if type(version) is not int or version != WIRE_VERSION or type(calls) is not list or not calls:
        return None
    read: list[WireCallFields] = []
    for call in calls:
        if type(call) is not dict:
            return None
        wire_id, chain, reply = call.get("id"), call.get("chain"), call.get("reply", True)
        key = call.get("key")
        if (
            type(wire_id) is not int
            or not 0 <= wire_id <= _MAX_WIRE_ID
            or type(chain) is not dict
            or type(reply) is not bool
            or len(call) != 2 + ("reply" in call) + ("key" in call)
            or (key is not None and (type(key) is not str or not 0 < len(key) <= _MAX_KEY))
        ):
            return None
        read.append((wire_id, chain, reply, key))
    return read


def read_call_frame(frame: Any) -> tuple[int, str, str, list[WireCallFields]] | None:
    """``(id, binding, instance, calls)`` of a call frame tree in the common, valid shape;
    ``None`` for any other tree (see ``read_calls``)."""
    if type(frame) is not dict or len(frame) != 5 or frame.get("type") != "call":
        return None
    request_id, binding, instance = frame.get("id"), frame.get("binding"), frame.get("instance")
    if (
        type(request_id) is not int
        or not 0 <= request_id <= _MAX_WIRE_ID
        or type(binding) is not str
        or not 0 < len(binding) <= _MAX_NAME
        or type(instance) is not str
        or not 0 < len(instance) <= _MAX_NAME
    ):
        return None
    calls = read_calls(frame.get("batch"))
    if calls is None:
        return None
    return request_id, binding, instance, calls


def calls_of(batch: Batch) -> list[WireCallFields]:
    """The calls of a validated ``Batch`` model."""
    return [(call.id, call.chain, call.reply, call.key) for call in batch.calls]


def refusal_body(
    code: str, message: str, calls: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The JSON tree of a refusal, ``{"error": {"code": ..., "message": ...}}``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if calls:
        error["calls"] = calls
    return {"error": error}


def describe_validation_error(exc: ValidationError, what: str) -> str:
    """A one-line summary of a pydantic ``ValidationError`` (its first three problems)."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(part) for part in error["loc"]) or "(top)"
        problems.append(f"{where}: {error['msg']}")
    return f"{what}: " + "; ".join(problems)


def downstream_message(frame: DownstreamFrame) -> DownstreamMessage:
    """The ``DownstreamMessage`` a frame carries, its payload decoded by the safe codec."""
    return DownstreamMessage(
        frame.binding, frame.instance, tuple(frame.client_ids), decode(frame.payload)
    )
