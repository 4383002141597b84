"""A turn's buffered effects, and the in-memory record of an activated actor.

Nothing a turn does reaches the actor's committed view or the database until the turn has
returned: writes, new continuations, cancellations and downstream messages wait in a
``TurnBuffer``. A turn that raises drops its buffer, so it leaves no trace.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from operation_chain import Codec, ExecutionPolicy
from rpc._host import DownstreamMessage

from ._clock import Clock
from ._errors import InvalidArgumentError, UnknownActorError
from ._store.base import Commit, Lease, NewContinuation, SignalSend

if TYPE_CHECKING:
    from ._actor import Actor
    from ._options import RetryPolicy

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a running turn needs from its system."""

    codec: Codec
    clock: Clock
    policy: ExecutionPolicy
    retry: RetryPolicy
    actors: frozenset[str] = frozenset()  # the bindings of this system's actor classes
    bindings: frozenset[str] = frozenset()  # what a remote call may target (remotes too)
    # The chain shapes continue_ has found good (see _scheduling._check_chain).
    passed_checks: set[tuple[object, ...]] = field(default_factory=set)


@dataclass(slots=True)
class TurnBuffer:
    """Effects of the running turn, applied only if it returns.

    The kinds of effect most turns never have start as empty tuples and become lists on
    their first ``add_...``: every turn makes a buffer, and four empty lists per turn were
    four more objects for the garbage collector to count towards its next pass.
    """

    now: float
    principal: Any = None
    writes: dict[str, bytes | None] = field(default_factory=dict)
    new: list[NewContinuation] | tuple[()] = ()
    cancels: list[str] | tuple[()] = ()
    downstream: list[DownstreamMessage] | tuple[()] = ()
    signals: list[SignalSend] | tuple[()] = ()

    def add_new(self, new: NewContinuation) -> None:
        self.new = _appended(self.new, new)

    def add_cancel(self, cid: str) -> None:
        self.cancels = _appended(self.cancels, cid)

    def add_downstream(self, message: DownstreamMessage) -> None:
        self.downstream = _appended(self.downstream, message)

    def add_signal(self, send: SignalSend) -> None:
        self.signals = _appended(self.signals, send)


def _appended(items: list[T] | tuple[()], item: T) -> list[T]:
    """``items`` with ``item`` appended: the list itself, or a new one for the empty tuple."""
    if isinstance(items, list):
        items.append(item)
        return items
    return [item]


class ActorSlot:
    """An activated actor: its instance, its committed state, and its turn lock.

    ``state`` holds encoded values, so every ``get`` decodes a fresh copy and an object
    mutated in place without a ``put`` cannot change what is stored. A slot is ``lost`` when
    its in-memory view is thrown away after a failed commit; the committer refuses the turns
    that ran on it, since they built on effects that never became durable. ``users`` counts
    turns holding or waiting for the slot, so an idle one can be evicted safely.
    """

    __slots__ = (
        "actor",
        "binding",
        "cls",
        "instance",
        "keys",
        "last_used",
        "lease",
        "loaded",
        "lock",
        "lost",
        "runtime",
        "state",
        "turn",
        "users",
    )

    def __init__(self, cls: type[Actor], instance: str, runtime: Runtime) -> None:
        self.cls = cls
        self.binding: str = cls.binding
        self.instance = instance
        self.runtime = runtime
        self.state: dict[str, bytes] = {}
        self.keys: dict[str, str] = {}
        self.loaded = False
        self.lost = False
        self.users = 0
        self.actor: Actor | None = None
        self.turn: TurnBuffer | None = None
        self.lock = asyncio.Lock()
        self.last_used = runtime.clock.now()
        self.lease: Lease | None = None  # when hosts share the database

    def finish_turn(self, buffer: TurnBuffer) -> Commit:
        """Fold a successful turn's effects into the in-memory view and return its commit."""
        for key, value in buffer.writes.items():
            if value is None:
                self.state.pop(key, None)
            else:
                self.state[key] = value
        if buffer.cancels:
            cancelled = set(buffer.cancels)
            for key in [k for k, cid in self.keys.items() if cid in cancelled]:
                del self.keys[key]
        for new in buffer.new:
            if new.key is not None:
                self.keys[new.key] = new.id
        return Commit(
            binding=self.binding,
            instance=self.instance,
            now=buffer.now,
            writes=buffer.writes,
            new=buffer.new,
            cancels=buffer.cancels,
            signals=buffer.signals,
            lease=self.lease,
        )


current_turn: contextvars.ContextVar[tuple[object, ActorSlot] | None] = contextvars.ContextVar(
    "current_turn", default=None
)
"""The system and actor slot of the call turn running in this task, if one is."""


def check_instance(instance: object) -> None:
    """Refuse what cannot be an actor's instance id."""
    if not isinstance(instance, str):
        raise TypeError(f"actor instance ids are str, not {type(instance).__name__}")
    if not instance or len(instance) > 512 or "\x00" in instance:
        raise InvalidArgumentError("actor instance ids are 1 to 512 characters, none of them NUL")


def signal_send(
    runtime: Runtime, binding: str, instance: str, name: str, payload: Any
) -> SignalSend:
    """A signal checked and encoded (a copy is taken now), ready to commit."""
    if not isinstance(binding, str):
        raise TypeError(f"bindings are str, not {type(binding).__name__}")
    if binding not in runtime.actors:
        raise UnknownActorError(f"no actor class is registered for binding {binding!r}")
    check_instance(instance)
    if not isinstance(name, str) or not 0 < len(name) <= 200 or "\x00" in name:
        raise InvalidArgumentError(
            f"a signal name is a str of 1 to 200 characters, none of them NUL, not {name!r}"
        )
    # Stored as the waiter's outcome, in the form every strategy's outcome has.
    return SignalSend(binding, instance, name, runtime.codec.dumps(("ok", payload)))
