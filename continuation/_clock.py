"""Clocks: the real one, and a manual one that moves only when a test says so."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from ._errors import InvalidArgumentError


@runtime_checkable
class Clock(Protocol):
    """Tells the time, as seconds since the epoch (UTC)."""

    def now(self) -> float:
        """The current time in epoch seconds."""
        ...


class SystemClock:
    """The real wall clock; the scheduler waits for due times on it by itself."""

    def now(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that stands still until moved, for tests that must never sleep.

    An ``ActorSystem`` on a manual clock fires nothing by itself: ``await system.advance(s)``
    moves the clock and runs what falls due, ``await system.drain()`` runs what is due now.

    Args:
        start: the starting time, as epoch seconds or an aware datetime; defaults to now.
    """

    def __init__(self, start: float | datetime | None = None) -> None:
        if start is None:
            self._now = time.time()
        elif isinstance(start, datetime):
            if start.tzinfo is None:
                raise InvalidArgumentError("ManualClock(start=...) needs an aware datetime")
            self._now = start.timestamp()
        elif isinstance(start, int | float) and not isinstance(start, bool):
            self._now = float(start)
        else:
            raise TypeError(f"start must be a number or a datetime, not {type(start).__name__}")

    def now(self) -> float:
        return self._now

    def set(self, when: float) -> None:
        """Move the clock to ``when``; it never moves backwards."""
        self._now = max(self._now, when)

    def __repr__(self) -> str:
        return f"ManualClock(start={datetime.fromtimestamp(self._now, UTC).isoformat()!r})"
