"""What a strategy's outbox holds, and how a stored outcome is written and read.

The work is recorded in the scheduling turn's transaction and dispatched only after it
commits; its outcome comes back as ``("ok", value)`` or ``("error", exception)``, encoded
with the trusted codec, and is injected at ``c.result`` or ``c.error`` in a later turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from operation_chain import Codec, OperationChain, register_type

DISPATCHED: Final = ("remote-call", "proxy-fetch")
"""Strategies whose work is sent somewhere after the commit (a signal is only waited for)."""


@register_type(name="continuation.RemoteCall")
@dataclass(frozen=True, slots=True)
class RemoteCall:
    """The work of a remote call: run ``call`` in a turn of ``binding``/``instance``."""

    binding: str
    instance: str
    call: OperationChain


Outcome = tuple[Literal["ok"], Any] | tuple[Literal["error"], BaseException]


def encode_outcome(codec: Codec, outcome: Outcome) -> bytes:
    """The stored form of an outcome. An exception the codec cannot store (an unregistered
    type holding odd arguments) is stored as a ``RuntimeError`` with the same text."""
    try:
        return codec.dumps(outcome)
    except Exception as exc:
        kind, value = outcome
        error: Exception
        if kind == "ok":
            error = TypeError(f"the result could not be stored: {exc}")
        else:
            error = RuntimeError(f"{type(value).__qualname__}: {value}")
        return codec.dumps(("error", error))


def succeeded(data: bytes | None) -> bool:
    """Whether a stored outcome is a value, not an exception (read without decoding it)."""
    return data is not None and data.startswith(b'{"$tuple":["ok",')


def decode_outcome(codec: Codec, data: bytes) -> Outcome:
    """An outcome from its stored form."""
    kind, value = codec.loads(data)
    if kind == "error" and isinstance(value, BaseException):
        return "error", value
    return "ok", value
