"""Stored rows as the ``ContinuationInfo`` records inspection hands out."""

from __future__ import annotations

from collections.abc import Sequence

from ._records import AuditEvent, ContinuationInfo, ContinuationStatus, to_datetime
from ._store.base import AuditRow, ContinuationRow


def info_of(
    row: ContinuationRow, *, running: bool, audit: Sequence[AuditRow] | None = None
) -> ContinuationInfo:
    """A snapshot of ``row``; ``running`` when its turn is executing right now."""
    status = ContinuationStatus(row.status)
    if running and status == ContinuationStatus.PENDING:
        status = ContinuationStatus.RUNNING
    return ContinuationInfo(
        id=row.id,
        binding=row.binding,
        instance=row.instance,
        strategy=row.strategy,
        status=status,
        chain=row.chain_text,
        error_chain=row.error_chain_text,
        due_at=None if row.due_at is None else to_datetime(row.due_at),
        scheduled_at=to_datetime(row.scheduled_at),
        attempts=row.attempts,
        last_error=row.last_error,
        last_traceback=row.last_traceback,
        created_at=to_datetime(row.created_at),
        updated_at=to_datetime(row.updated_at),
        finished_at=None if row.finished_at is None else to_datetime(row.finished_at),
        key=row.key,
        cron=row.cron,
        version=row.version,
        cancel_requested=row.cancel_requested,
        audit=_trail(row, audit) if audit is not None else (),
    )


def _trail(row: ContinuationRow, stored: Sequence[AuditRow]) -> tuple[AuditEvent, ...]:
    """The audit trail: the stored events between "scheduled" and "completed", which are
    read from the row's ``created_at`` and ``finished_at`` rather than stored twice."""
    events = [AuditEvent(to_datetime(row.created_at), "scheduled")]
    events += [AuditEvent(to_datetime(a.at), a.event, a.detail) for a in stored]
    if row.status == ContinuationStatus.COMPLETED and row.finished_at is not None:
        events.append(AuditEvent(to_datetime(row.finished_at), "completed"))
    return tuple(events)
