"""Records of the bouncer: a wait's stored row, and what one delivery attempt came to."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson


class WaitStatus(StrEnum):
    """Where a wait is in its life.

    ``pending`` until its callback answers 2xx (``delivered``), it is cancelled
    (``cancelled``), or its callbacks kept failing past the give-up age (``failed``, kept for
    inspection).
    """

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Wait:
    """One registered wait, as stored.

    Attributes:
        id: the bouncer's id for it.
        key: the client's idempotency key, if it gave one.
        callback: the URL the bouncer POSTs to when it is due.
        payload: the client's opaque payload, as JSON text.
        due_at: when it is due, epoch seconds.
        next_at: when the next delivery attempt is due (``None`` once finished).
        status: see ``WaitStatus``.
        attempts: delivery attempts made so far.
        last_error: why the last attempt failed, if it did.
        created_at: when it was registered.
        updated_at: when it last changed.
        finished_at: when it was delivered, cancelled or given up.
    """

    id: str
    key: str | None
    callback: str
    payload: str
    due_at: float
    next_at: float | None
    status: WaitStatus
    attempts: int
    last_error: str | None
    created_at: float
    updated_at: float
    finished_at: float | None

    def to_json(self) -> bytes:
        """The wait as the HTTP API shows it (the payload embedded as it was given)."""
        fields: dict[str, Any] = {
            "id": self.id,
            "key": self.key,
            "status": self.status.value,
            "due_at": self.due_at,
            "next_attempt_at": self.next_at,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "callback": self.callback,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
        }
        head = orjson.dumps(fields)
        return head[:-1] + b',"payload":' + self.payload.encode() + b"}"


@dataclass(frozen=True, slots=True)
class NewWait:
    """A wait to insert."""

    id: str
    key: str | None
    callback: str
    payload: str
    due_at: float
    created_at: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one delivery attempt came to, written in a group commit.

    Attributes:
        id: the wait.
        status: ``delivered``, ``failed`` (given up), or ``pending`` (retry at ``next_at``).
        next_at: the next attempt's time when still pending.
        attempts: attempts made, this one included.
        last_error: why it failed, or ``None``.
        at: when the attempt ended.
    """

    id: str
    status: WaitStatus
    next_at: float | None
    attempts: int
    last_error: str | None
    at: float
