"""Reading a batch's answer back into its calls: values, errors and refusals.

A 200 answer settles each call with its value or its exception. A 4xx refusal that names
particular calls fails those (and the calls that need their results) with the matching
``RequestRejectedError`` and returns the rest, which ran nothing and are sent again; a
refusal that names no call fails the whole batch.
"""

from __future__ import annotations

from types import NoneType
from typing import Any

from pydantic import ValidationError

from operation_chain import decode

from ._batch import PendingCall, Plan
from ._errors import (
    AuthenticationError,
    BindingNotFoundError,
    ChainRefusedError,
    RequestRejectedError,
    TransportError,
)
from ._messages import (
    CHAIN_LIMIT,
    CHAIN_REFUSED,
    UNAUTHENTICATED,
    UNKNOWN_BINDING,
    CallRefusal,
    Refusal,
    RefusalBody,
)
from ._transports.base import RpcResponse

_JSON_SCALARS = frozenset({str, int, float, bool, NoneType})

_REJECTIONS: dict[str, type[RequestRejectedError]] = {
    UNAUTHENTICATED: AuthenticationError,
    UNKNOWN_BINDING: BindingNotFoundError,
    CHAIN_REFUSED: ChainRefusedError,
    CHAIN_LIMIT: ChainRefusedError,
}


def settle_answer(plan: Plan, answer: RpcResponse | Exception) -> list[PendingCall]:
    """Settle the calls of ``plan`` with ``answer``; return those to send again (after a
    refusal that concerned only others). Raises what failed the whole request."""
    if isinstance(answer, Exception):
        raise answer
    if answer.status >= 500:
        raise TransportError(
            f"the server failed with status {answer.status}: {str(answer.payload)[:200]}"
        )
    if answer.status == 200:
        settle_results(plan, answer)
        return []
    return settle_refusal(plan, answer)


def settle_error(call: PendingCall, error: BaseException) -> None:
    if not call.future.done():
        call.future.set_exception(error)


def settle_results(plan: Plan, response: RpcResponse) -> None:
    settled: set[int] = set()
    for wire_id, failed, encoded in _results(response.payload):
        group = plan.waiting.get(wire_id)
        if group is None:
            continue
        settled.add(wire_id)
        if type(encoded) in _JSON_SCALARS:  # the usual result: its own encoding
            value = encoded
        else:
            try:
                value = decode(encoded)
            except Exception as exc:  # e.g. a type this side has not registered
                value, failed = exc, True
        if failed and not isinstance(value, BaseException):
            value = TransportError(f"the server sent a non-exception error: {value!r}")
        for call in group:
            if call.future.done():
                continue
            if failed:
                call.future.set_exception(value)
            else:
                call.future.set_result(value)
    for wire_id, group in plan.waiting.items():
        if wire_id not in settled:
            missing = TransportError(f"the server's answer has no result for call {wire_id}")
            for call in group:
                settle_error(call, missing)


def _results(payload: dict[str, Any]) -> list[tuple[int, bool, Any]]:
    """``(wire id, failed, encoded value or error)`` for each result of a batch answer.

    Checked by hand rather than by a pydantic model: this runs on every answer, and the
    shape is small.
    """
    results = payload.get("results")
    if type(results) is not list or len(payload) != 1:
        raise TransportError(f"the server's answer is not a batch result: {str(payload)[:200]}")
    read: list[tuple[int, bool, Any]] = []
    for result in results:
        if (
            type(result) is not dict
            or len(result) != 2
            or type(result.get("id")) is not int
            or ("ok" in result) == ("error" in result)
        ):
            raise TransportError(f"the server's answer has a malformed result: {result!r}"[:300])
        failed = "error" in result
        read.append((result["id"], failed, result["error"] if failed else result["ok"]))
    return read


def settle_refusal(plan: Plan, response: RpcResponse) -> list[PendingCall]:
    """Reject the refused calls (and those needing them); return the rest to send again."""
    try:
        refusal = RefusalBody.model_validate(response.payload).error
    except ValidationError:
        raise TransportError(
            f"the server answered {response.status} without a readable refusal:"
            f" {str(response.payload)[:200]}"
        ) from None
    by_call = {refused.id: refused for refused in refusal.calls}
    blocked = plan.dependents(set(by_call)) & set(plan.waiting)
    if not blocked:  # the whole request was refused (or the server named unknown calls)
        error = _rejection(refusal, response.status)
        for group in plan.waiting.values():
            for call in group:
                settle_error(call, error)
        return []
    again: list[PendingCall] = []
    for wire_id, group in plan.waiting.items():
        if wire_id not in blocked:
            again += group
            continue
        cause = _cause(plan, wire_id, by_call)
        error = _rejection(cause, response.status, wire_id)
        for call in group:
            settle_error(call, error)
    return again


def _cause(plan: Plan, wire_id: int, by_call: dict[int, CallRefusal]) -> CallRefusal:
    """The refusal that blocks ``wire_id``: its own, or that of a call it needs."""
    pending, seen = [wire_id], set()
    while pending:
        current = pending.pop()
        if current in by_call:
            return by_call[current]
        seen.add(current)
        pending += [needed for needed in plan.needs.get(current, ()) if needed not in seen]
    raise AssertionError("unreachable: a blocked call needs a refused one")


def _rejection(
    refusal: Refusal | CallRefusal, status: int, call_id: int | None = None
) -> RequestRejectedError:
    """The typed error for a refusal, or for one refused call of a batch."""
    cls = _REJECTIONS.get(refusal.code, RequestRejectedError)
    message = refusal.message
    if isinstance(refusal, CallRefusal) and refusal.id != call_id:
        message = f"it needs call {refusal.id}, which was refused: {message}"
    return cls(refusal.code, message, status=status, call_id=call_id)
