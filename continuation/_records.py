"""The records ``continuation`` hands out: statuses, alarm details, inspection results."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from operation_chain import register_type


class ContinuationStatus(StrEnum):
    """Where a continuation is in its life.

    ``pending``: stored, waiting for its time. ``running``: its turn is executing now (only
    ever seen in memory; the database never holds it, so a crash cannot strand a row there).
    ``completed``, ``dead`` (retries used up), ``cancelled`` and ``version_mismatch`` are
    final, though ``system.retry`` re-queues ``dead`` and ``version_mismatch``.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    DEAD = "dead"
    CANCELLED = "cancelled"
    VERSION_MISMATCH = "version_mismatch"


FINAL_STATUSES = frozenset(
    {
        ContinuationStatus.COMPLETED,
        ContinuationStatus.DEAD,
        ContinuationStatus.CANCELLED,
        ContinuationStatus.VERSION_MISMATCH,
    }
)


@register_type
@dataclass(frozen=True, slots=True)
class AlarmInfo:
    """What an alarm handler receives at ``c.result``.

    Attributes:
        id: the continuation id.
        scheduled_at: when it was due.
        fired_at: when this attempt ran (on the system's clock).
        attempt: 1 for the first attempt, 2 for the first retry, and so on.
    """

    id: str
    scheduled_at: datetime
    fired_at: datetime
    attempt: int


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One entry of a continuation's audit trail (scheduled, attempt failed, completed...)."""

    at: datetime
    event: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class ContinuationInfo:
    """A continuation as inspection sees it; a snapshot, not a live view.

    Attributes:
        id: the continuation id ``continue_`` returned.
        binding: the actor's binding.
        instance: the actor's instance id.
        strategy: ``"alarm"``.
        status: see ``ContinuationStatus``.
        chain: the handler chain rendered as Python.
        error_chain: the error chain rendered as Python, if there is one.
        due_at: when it fires next (``None`` once final).
        scheduled_at: the due time of the current occurrence, before any retry delay.
        attempts: failed or running attempts of the current occurrence.
        last_error: ``"TypeName: message"`` of the last failure.
        last_traceback: the traceback text of the last failure.
        created_at: when the scheduling turn committed.
        updated_at: the last change.
        finished_at: when it reached a final status.
        key: the deduplication key, if any.
        cron: the cron expression of a recurring alarm.
        version: the actor class version it was scheduled under.
        cancel_requested: cancelled, with the cancellation still to reach its error chain.
        audit: the audit trail, oldest first (filled in by ``system.continuation(cid)`` only).
    """

    id: str
    binding: str
    instance: str
    strategy: str
    status: ContinuationStatus
    chain: str
    error_chain: str | None
    due_at: datetime | None
    scheduled_at: datetime
    attempts: int
    last_error: str | None
    last_traceback: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    key: str | None
    cron: str | None
    version: str
    cancel_requested: bool
    audit: tuple[AuditEvent, ...] = ()


def to_datetime(seconds: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)
