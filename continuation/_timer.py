"""The seam for an outside timer: ``ActorSystem(timer=...)`` instead of the scheduler's loop.

A timer is started with the system and closed with it. While it runs, the system's own
scheduler loop does not: the timer learns of due times and wakes the system to run them
(``continuation.bouncer.BouncerTimer`` does it through the bouncer service).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._system import ActorSystem


@runtime_checkable
class Timer(Protocol):
    """Wakes an ``ActorSystem`` when its continuations fall due."""

    async def start(self, system: ActorSystem) -> None:
        """Attach to ``system`` (already open) and start watching its due times."""
        ...

    def notice(self, due: float) -> None:
        """Something is due at ``due`` (epoch seconds): every due time the scheduler hears
        of (new, retried, cancelled, signalled) is told here too."""
        ...

    async def aclose(self) -> None:
        """Stop; called when the system closes, before its store does."""
        ...
