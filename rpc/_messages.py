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
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from operation_chain import decode, register_type

from ._host import DownstreamMessage

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


_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)

WireId = Annotated[int, Field(ge=0, le=2**53)]
Name = Annotated[str, Field(min_length=1, max_length=1024)]


class WireCall(BaseModel):
    """One call of a batch: a chain in its JSON form, and whether its result is wanted."""

    model_config = _STRICT

    id: WireId
    chain: dict[str, Any]
    reply: bool = True


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
