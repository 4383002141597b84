"""Server-side dispatch, independent of any web framework.

``RpcServer`` validates a batch completely before running any of it, then runs its calls in
order against the ``ActorHost``, each settling on its own, and encodes the answer with the
safe codec. It also fans downstream messages out to subscribed connections. The Starlette
app (``_asgi``), the WebSocket session (``_session``) and ``InProcessTransport`` all go
through it, so every transport validates and encodes the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from operation_chain import (
    DEFAULT_POLICY,
    ChainLimitError,
    ChainSecurityError,
    Codec,
    ExecutionPolicy,
    OperationChain,
    OperationChainError,
    RemoteError,
)

from ._graph import ValueGraph
from ._host import ActorHost, DownstreamMessage
from ._messages import (
    BAD_REFERENCE,
    CHAIN_LIMIT,
    CHAIN_REFUSED,
    INVALID_CHAIN,
    MALFORMED_REQUEST,
    REQUEST_TOO_LARGE,
    STATUS_OF,
    UNKNOWN_BINDING,
    Batch,
    CallRef,
    WireCallFields,
    calls_of,
    describe_validation_error,
    parse_json,
    read_calls,
    refusal_body,
)

logger = logging.getLogger("rpc.server")


class Refused(Exception):
    """A request refused before anything in it ran; becomes a 4xx answer."""

    def __init__(self, code: str, message: str, calls: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.calls = calls
        self.status = STATUS_OF[code]

    def body(self) -> dict[str, Any]:
        return refusal_body(self.code, self.message, self.calls)


class Subscriber(Protocol):
    """A connection that receives downstream frames (a WebSocket session, an in-process
    transport). ``deliver`` is called on the event loop and must not block."""

    def deliver(self, frame: bytes) -> None: ...


@dataclass(slots=True)
class _Call:
    """A validated call of a batch, ready to run."""

    id: int
    chain: OperationChain
    reply: bool
    refs: list[CallRef]
    graph: ValueGraph | None
    key: str | None = None


class RpcServer:
    """Runs validated batches against an ``ActorHost`` and forwards its downstream messages.

    Args:
        host: the actor runtime (``ActorSystem``, or any ``ActorHost``).
        policy: enforced statically before a batch runs and again by the host while each
            call runs; its ``max_encoded_size`` also bounds a request's size in bytes.
        redact_tracebacks: send errors without the server's traceback text.
    """

    def __init__(
        self,
        host: ActorHost,
        *,
        policy: ExecutionPolicy | None = None,
        redact_tracebacks: bool = False,
    ) -> None:
        if not isinstance(host, ActorHost):
            raise TypeError(
                "the RPC server needs an ActorHost (has_binding, call, add_downstream_listener),"
                f" not {type(host).__name__}"
            )
        if policy is not None and not isinstance(policy, ExecutionPolicy):
            raise TypeError(f"policy must be an ExecutionPolicy, not {type(policy).__name__}")
        self.host = host
        self.policy = policy if policy is not None else DEFAULT_POLICY
        self.codec = Codec(tracebacks=not redact_tracebacks)
        self.max_request_size = self.policy.max_encoded_size
        self._subscribers: dict[str, dict[Subscriber, None]] = {}
        self._unlisten: Any = None

    # -- batches -----------------------------------------------------------------------------

    async def handle_body(
        self, binding: str, instance: str, body: bytes, principal: Any
    ) -> tuple[int, bytes]:
        """Answer one batch given as JSON bytes: the status and the JSON answer."""
        try:
            self.check_size(len(body))
            calls = self.parse_batch(body)
        except Refused as refusal:
            return refusal.status, orjson.dumps(refusal.body())
        status, answer = await self.run_batch(binding, instance, calls, principal)
        return status, orjson.dumps(answer)

    def check_size(self, size: int) -> None:
        """Refuse a request body (or frame) over ``max_request_size`` bytes."""
        if size > self.max_request_size:
            raise Refused(
                REQUEST_TOO_LARGE,
                f"the request has {size} bytes: {size} > {self.max_request_size}"
                " (the policy's max_encoded_size)",
            )

    def parse_batch(self, body: bytes) -> list[WireCallFields]:
        """Parse and validate a batch envelope; its calls."""
        try:
            tree = parse_json(body)
        except ValueError as exc:
            raise Refused(MALFORMED_REQUEST, f"the body is not valid JSON: {exc}") from None
        calls = read_calls(tree)
        if calls is not None:
            return calls
        try:
            return calls_of(Batch.model_validate(tree))
        except ValidationError as exc:
            raise Refused(
                MALFORMED_REQUEST, describe_validation_error(exc, "not a valid batch")
            ) from None

    async def run_batch(
        self, binding: str, instance: str, calls: list[WireCallFields], principal: Any
    ) -> tuple[int, dict[str, Any]]:
        """Validate every call of a batch, then run them in order; the status and answer.

        ``calls`` come from ``parse_batch``, ``read_calls`` or ``calls_of``: their chain
        forms are trees a JSON parser produced.
        """
        try:
            prepared = self._prepare(binding, calls)
        except Refused as refusal:
            return refusal.status, refusal.body()
        outcomes: dict[int, tuple[bool, Any]] = {}
        results: list[dict[str, Any]] = []
        for call in prepared:
            chain = call.chain if call.graph is None else self._substitute(call, outcomes)
            if chain is None:  # a call it needs failed: so does this one, without running
                outcome = outcomes[call.id]
            else:
                try:
                    if call.key is None:
                        value = await self.host.call(
                            binding, instance, chain, principal=principal, policy=self.policy
                        )
                    else:
                        value = await self.host.call(
                            binding, instance, chain, principal=principal, policy=self.policy,
                            idempotency_key=call.key,
                        )  # fmt: skip
                except Exception as exc:
                    outcome = outcomes[call.id] = False, exc
                else:
                    outcome = outcomes[call.id] = True, value
            if call.reply:
                results.append(self._encode(call.id, *outcome))
        return 200, {"results": results}

    def _prepare(self, binding: str, calls: list[WireCallFields]) -> list[_Call]:
        """Check every call of the batch; refuse the whole batch, naming each bad call."""
        if not self.host.has_binding(binding):
            raise Refused(UNKNOWN_BINDING, f"there are no actors of the binding {binding!r} here")
        prepared: list[_Call] = []
        refusals: list[dict[str, Any]] = []
        earlier: set[int] = set()
        for wire_id, form, reply, key in calls:
            try:
                prepared.append(self._prepare_call(wire_id, form, reply, key, earlier))
            except Refused as refusal:
                refusals.append({"id": wire_id, "code": refusal.code, "message": refusal.message})
            earlier.add(wire_id)
        if refusals:
            first = refusals[0]
            more = f" (and {len(refusals) - 1} more refused calls)" if len(refusals) > 1 else ""
            raise Refused(first["code"], f"call {first['id']}: {first['message']}{more}", refusals)
        return prepared

    def _prepare_call(
        self, wire_id: int, form: dict[str, Any], reply: bool, key: str | None, earlier: set[int]
    ) -> _Call:
        if wire_id in earlier:
            raise Refused(MALFORMED_REQUEST, f"the call id {wire_id} is used twice")
        made = CallRef.made
        chain = self._chain(form)
        if CallRef.made == made:  # decoding it rebuilt no reference: nothing to look for
            return _Call(wire_id, chain, reply, [], None, key)
        graph = ValueGraph(chain)
        refs = [leaf for leaf in graph.leaves if type(leaf) is CallRef]
        for ref in refs:
            if type(ref.call) is not int or ref.call not in earlier:
                raise Refused(
                    BAD_REFERENCE,
                    f"a reference to call {ref.call!r}, which is not an earlier call of this batch",
                )
        return _Call(wire_id, chain, reply, refs, graph if refs else None, key)

    def _chain(self, form: dict[str, Any]) -> OperationChain:
        """Decode one chain and check it against the policy; nothing runs.

        The check is noted on the chain (``ExecutionPolicy.precheck``), so the host's
        execution with the same policy does not walk it again. The chain is this request's
        own, freshly decoded, and nothing else reaches it before it runs.
        """
        if "v" not in form:
            raise Refused(INVALID_CHAIN, 'a chain must be in its JSON form, {"v": 1, "ops": [...]}')
        try:
            chain = OperationChain.from_parsed_json(form)
            if not chain.ops:
                raise Refused(INVALID_CHAIN, "a chain must have at least one operation")
            self.policy.precheck(chain)
        except ChainLimitError as exc:
            raise Refused(CHAIN_LIMIT, str(exc)) from None
        except ChainSecurityError as exc:
            raise Refused(CHAIN_REFUSED, str(exc)) from None
        except OperationChainError as exc:
            raise Refused(INVALID_CHAIN, str(exc)) from None
        return chain

    def _substitute(
        self, call: _Call, outcomes: dict[int, tuple[bool, Any]]
    ) -> OperationChain | None:
        """``call``'s chain with the results of the calls it refers to; ``None`` (and the
        failure noted as its outcome) when one of them failed."""
        assert call.graph is not None
        values: dict[int, Any] = {}
        for ref in call.refs:
            ok, value = outcomes[ref.call]
            if not ok:
                outcomes[call.id] = False, value
                return None
            values[id(ref)] = value
        return call.graph.replace(values)

    def _encode(self, wire_id: int, ok: bool, value: Any) -> dict[str, Any]:
        if ok:
            try:
                return {"id": wire_id, "ok": self.codec.encode(value)}
            except Exception as exc:
                value = TypeError(f"the call ran, but its result cannot be sent back: {exc}")
        try:
            return {"id": wire_id, "error": self.codec.encode(value)}
        except Exception as exc:  # str() of the exception itself failed
            name = f"{type(value).__module__}.{type(value).__qualname__}"
            fallback = RemoteError(name, f"the error could not be encoded: {exc!r}")
            return {"id": wire_id, "error": self.codec.encode(fallback)}

    # -- downstream --------------------------------------------------------------------------

    def subscribe(self, client_id: str, subscriber: Subscriber) -> None:
        """Forward downstream messages for ``client_id`` to ``subscriber``."""
        self._subscribers.setdefault(client_id, {})[subscriber] = None
        if self._unlisten is None:
            self._unlisten = self.host.add_downstream_listener(self._forward)

    def unsubscribe(self, client_id: str, subscriber: Subscriber) -> None:
        """Stop forwarding ``client_id``'s messages to ``subscriber``; idempotent."""
        subscribers = self._subscribers.get(client_id)
        if subscribers is None or subscriber not in subscribers:
            return
        del subscribers[subscriber]
        if not subscribers:
            del self._subscribers[client_id]
        if not self._subscribers and self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    def _forward(self, message: DownstreamMessage) -> None:
        """The host's listener: one frame per subscriber, naming its addressees."""
        targets: dict[Subscriber, list[str]] = {}
        for client_id in dict.fromkeys(message.client_ids):
            for subscriber in self._subscribers.get(client_id, ()):
                targets.setdefault(subscriber, []).append(client_id)
        if not targets:
            return
        try:
            payload = self.codec.encode(message.payload)
        except Exception:
            logger.exception(
                "dropped a downstream message from %s/%s: its payload cannot be encoded",
                message.binding,
                message.instance,
            )
            return
        frames: dict[tuple[str, ...], bytes] = {}
        for subscriber, client_ids in targets.items():
            key = tuple(client_ids)
            frame = frames.get(key)
            if frame is None:
                frame = frames[key] = orjson.dumps(
                    {
                        "type": "downstream",
                        "binding": message.binding,
                        "instance": message.instance,
                        "client_ids": client_ids,
                        "payload": payload,
                    }
                )
            subscriber.deliver(frame)
