"""How a continuation's row changes when it fires, fails, halts, or is cancelled or retried.

Pure functions of the row as read and the time: the scheduler and the system build a
``RowUpdate`` with one of them and commit it in the turn that caused it.
"""

from __future__ import annotations

import random
import traceback
from datetime import UTC, datetime
from typing import Final

import orjson

from ._options import RetryPolicy, next_cron_time
from ._records import ContinuationStatus
from ._store.base import ContinuationRow, RowUpdate
from ._work import succeeded

_rng = random.Random()
# The columns the two commonest transitions change (see RowUpdate.columns).
_COMPLETION_COLUMNS: Final = ("status", "due_at", "attempts", "finished_at")
_DELIVERY_COLUMNS: Final = ("due_at", "phase", "outcome")


def _update(row: ContinuationRow, **changes: object) -> RowUpdate:
    values: dict[str, object] = {
        "id": row.id,
        "revision": row.revision,
        "status": row.status,
        "due_at": row.due_at,
        "scheduled_at": row.scheduled_at,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "last_traceback": row.last_traceback,
        "finished_at": row.finished_at,
        "cancel_requested": row.cancel_requested,
        "events": (),
        "phase": row.phase,
        "outcome": row.outcome,
    }
    values.update(changes)
    return RowUpdate(**values)  # type: ignore[arg-type]


def _finished(
    row: ContinuationRow, status: ContinuationStatus, now: float, **changes: object
) -> RowUpdate:
    return _update(row, status=status, due_at=None, finished_at=now, **changes)


def completed(row: ContinuationRow, now: float) -> RowUpdate:
    """The handler ran: done, or for cron, due again at the next matching time."""
    attempts = row.attempts + 1
    if row.cron is None or row.cancel_requested:
        status = (
            ContinuationStatus.CANCELLED if row.cancel_requested else ContinuationStatus.COMPLETED
        )
        # A plain completion is not written to the audit table: the trail shows it from the
        # row's own finished_at (as it shows "scheduled" from created_at), which saves two
        # of the few row writes every continuation costs.
        events = (("cancelled", None),) if row.cancel_requested else ()
        # Built in place, not through _finished: this runs for every firing.
        return RowUpdate(
            row.id, row.revision, status, None, row.scheduled_at, attempts, row.last_error,
            row.last_traceback, now, row.cancel_requested, events, row.phase, row.outcome,
            _COMPLETION_COLUMNS,
        )  # fmt: skip
    timezone = orjson.loads(row.options).get("timezone")
    due = next_cron_time(row.cron, timezone, max(now, row.scheduled_at))
    when = datetime.fromtimestamp(due, UTC).isoformat()
    return _update(
        row, due_at=due, scheduled_at=due, attempts=0, last_error=None, last_traceback=None,
        events=[("fired", f"next due at {when}")],
    )  # fmt: skip


def failed(row: ContinuationRow, now: float, exc: BaseException, retry: RetryPolicy) -> RowUpdate:
    """The handler raised: retry after a backoff, or, with attempts used up, dead."""
    attempts = row.attempts + 1
    error = f"{type(exc).__qualname__}: {exc}"
    trace = "".join(traceback.format_exception(exc))
    events: list[tuple[str, str | None]] = [("attempt failed", f"attempt {attempts}: {error}")]
    if attempts >= retry.max_attempts:
        events.append(("dead", f"after {attempts} attempts"))
        return _finished(
            row, ContinuationStatus.DEAD, now, attempts=attempts, last_error=error,
            last_traceback=trace, events=events,
        )  # fmt: skip
    due = now + retry.delay(attempts, _rng)
    return _update(
        row, due_at=due, attempts=attempts, last_error=error, last_traceback=trace, events=events
    )


def halted(row: ContinuationRow, now: float, reason: str) -> RowUpdate:
    """It must not run against this code: ``version_mismatch``, kept for ``system.retry``."""
    return _finished(
        row, ContinuationStatus.VERSION_MISMATCH, now, last_error=reason,
        events=[("version mismatch", reason)],
    )  # fmt: skip


def cancellation(row: ContinuationRow, now: float) -> RowUpdate:
    """Cancelled from outside: with an error chain, due now to receive
    ``ContinuationCancelled``; without one, cancelled at once."""
    if row.error_chain is not None:
        return _update(
            row, cancel_requested=True, due_at=now, attempts=0, events=[("cancel requested", None)]
        )
    return _finished(row, ContinuationStatus.CANCELLED, now, events=[("cancelled", None)])


def requeued(row: ContinuationRow, now: float) -> RowUpdate:
    """``system.retry``: pending again, due now, with a fresh count of attempts.

    A strategy's continuation whose work failed or timed out sends its work again (or, for
    a signal, waits again); one whose handler failed on a successful outcome runs the
    handler again on that same outcome.
    """
    update = _update(
        row, status=ContinuationStatus.PENDING, due_at=now, scheduled_at=now, attempts=0,
        finished_at=None, events=[("retried", f"was {row.status}")],
    )  # fmt: skip
    if row.phase is not None and not (row.phase == "ready" and succeeded(row.outcome)):
        update.phase, update.outcome = "retry", None
    return update


def delivered(row: ContinuationRow, now: float, outcome: bytes, event: str) -> RowUpdate:
    """The work's outcome is in: stored with the row, which is due now to receive it."""
    # Built in place, not through _update: this runs for every outcome.
    return RowUpdate(
        row.id, row.revision, row.status, now, row.scheduled_at, row.attempts, row.last_error,
        row.last_traceback, row.finished_at, row.cancel_requested, ((event, None),), "ready",
        outcome, _DELIVERY_COLUMNS,
    )  # fmt: skip


def after_delivery(row: ContinuationRow, update: RowUpdate) -> ContinuationRow:
    """The row as the ``delivered`` update computed from it leaves it, to fire from memory."""
    # Positional, in ContinuationRow's field order: this runs for every same-system call.
    r = row
    return ContinuationRow(
        r.id, r.binding, r.instance, r.strategy, r.status, r.chain, r.error_chain, r.chain_text,
        r.error_chain_text, r.options, r.retry, update.due_at, r.scheduled_at, r.attempts,
        r.last_error, r.last_traceback, r.created_at, r.updated_at, r.finished_at, r.key,
        r.cron, r.version, r.cancel_requested, update.revision + 1, update.phase, r.work,
        update.outcome, r.wait_name,
    )  # fmt: skip


def work_failed(
    row: ContinuationRow, now: float, exc: BaseException, retry: RetryPolicy
) -> RowUpdate:
    """The work failed (or timed out) and no error chain takes the failure: a failed
    attempt, after which the work is dispatched again, or, attempts used up, dead."""
    update = failed(row, now, exc, retry)
    if update.status == ContinuationStatus.PENDING:
        update.phase, update.outcome = "retry", None
    return update


def redispatched(row: ContinuationRow, now: float, deadline: float | None) -> RowUpdate:
    """Failed work goes out again: waiting for its outcome until ``deadline``."""
    return _update(
        row, phase="waiting", outcome=None, due_at=deadline,
        events=[(
            "waiting again" if row.strategy == "signal" else "dispatched again",
            f"attempt {row.attempts + 1}",
        )],
    )  # fmt: skip
