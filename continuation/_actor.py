"""``Actor``: the base class of actor-style objects run by an ``ActorSystem``."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, ClassVar

from operation_chain import decode, encode
from rpc._host import DownstreamMessage

from ._errors import OutsideTurnError
from ._scheduling import schedule
from ._storage import ActorStorage
from ._turn import signal_send

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._turn import ActorSlot, TurnBuffer

ACTIVATING: contextvars.ContextVar[ActorSlot] = contextvars.ContextVar("activating")


class Actor:
    """An object with an identity, private durable storage, and one turn at a time.

    Subclass it and register the class with ``ActorSystem(actors=[...])``. The system creates
    instances itself, on first use, and may evict idle ones from memory; everything that must
    outlive that belongs in ``self.storage``. ``__init__`` may be overridden (call
    ``super().__init__()`` first) to build in-memory views of storage.

    Class attributes:
        binding: the name the actor is addressed by; the class name unless set.
        version: stored with every continuation; see ``compatible_versions``.
        compatible_versions: older versions whose stored continuations may still run here.
            Any other version halts as ``version_mismatch`` instead of running against
            changed code.
    """

    binding: ClassVar[str]
    version: ClassVar[str] = "1"
    compatible_versions: ClassVar[frozenset[str]] = frozenset()

    instance: str
    storage: ActorStorage

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "binding" not in cls.__dict__:
            cls.binding = cls.__name__

    def __init__(self) -> None:
        slot = ACTIVATING.get(None)
        if slot is None or slot.actor is not None or not isinstance(self, slot.cls):
            raise TypeError(
                f"{type(self).__name__} is created by its ActorSystem; use system.get(...)"
            )
        self._actor_slot = slot
        self.instance = slot.instance
        self.storage = ActorStorage(slot)

    @property
    def principal(self) -> Any:
        """Who made the current call (what the RPC server's ``authenticate`` returned);
        ``None`` for local calls and continuation firings."""
        turn = self._actor_slot.turn
        return None if turn is None else turn.principal

    def continue_(
        self,
        chain: Any,
        error_chain: Any = None,
        /,
        *,
        strategy: str = "alarm",
        **options: Any,
    ) -> str:
        """Schedule ``chain`` to run in a later turn of this actor; return its id.

        The chain is recorded on ``Continuation(self)``; ``c.result`` receives the
        strategy's value and ``c.error`` (in ``error_chain``) its failure. Nothing is stored
        until this turn commits, and then atomically with the turn's other effects.

        Args:
            chain: the handler chain, e.g. ``c.deliver(text, c.result)``.
            error_chain: run instead with ``c.error`` when the strategy fails or the
                continuation is cancelled.
            strategy: ``"alarm"``.
            **options: the strategy's options (``delay=``, ``at=``, ``cron=``,
                ``timezone=``) and, for every strategy, ``retry=`` and ``key=``.

        Raises:
            ContinuationOptionsError: unknown strategy, unknown option or bad combination.
            ContinuationChainError: the chain does not fit this class.
            OutsideTurnError: called outside a turn of this actor.
        """
        return schedule(self._actor_slot, self._turn(), chain, error_chain, strategy, options)

    def cancel_continuation(self, continuation_id: str) -> None:
        """Cancel one of this actor's pending continuations when this turn commits.

        If it has an error chain, ``ContinuationCancelled`` is delivered to it in a later
        turn. Ids of other actors' continuations, or of finished ones, are ignored.
        """
        if not isinstance(continuation_id, str):
            raise TypeError(f"continuation ids are str, not {type(continuation_id).__name__}")
        self._turn().add_cancel(continuation_id)

    def signal(self, binding: str, instance: str, name: str, payload: Any = None) -> None:
        """Send signal ``name`` to an actor of this system when this turn commits: the
        oldest of its continuations waiting for that name receives ``payload`` at
        ``c.result``; with none waiting, the signal is kept for the next one that waits.

        Raises:
            UnknownActorError: ``binding`` is not an actor class of this system.
            InvalidArgumentError: a bad instance id, or a name empty or over 200 characters.
        """
        slot = self._actor_slot
        self._turn().add_signal(signal_send(slot.runtime, binding, instance, name, payload))

    def send_downstream(self, client_ids: str | Iterable[str], payload: Any) -> None:
        """Send ``payload`` to connected clients once this turn commits.

        ``payload`` must be encodable by the safe codec (it crosses the wire); a copy is
        taken now, so later changes to the object are not sent.
        """
        ids = (client_ids,) if isinstance(client_ids, str) else tuple(client_ids)
        if not ids or not all(isinstance(i, str) for i in ids):
            raise TypeError("client_ids must be a str or an iterable of str")

        copy = decode(encode(payload))
        slot = self._actor_slot
        self._turn().add_downstream(DownstreamMessage(slot.binding, slot.instance, ids, copy))

    def _turn(self) -> TurnBuffer:
        turn = self._actor_slot.turn
        if turn is None:
            raise OutsideTurnError(
                f"{type(self).__name__}: continue_, cancel_continuation and send_downstream"
                " work only during a turn of this actor"
            )
        return turn

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.binding}/{self.instance}>"
