"""Activation: one in-memory slot per live actor, created on first use and evicted when idle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from ._actor import ACTIVATING
from ._leases import LeasedElsewhere, LeaseKeeper
from ._store.base import Store
from ._turn import ActorSlot, Runtime

if TYPE_CHECKING:
    from ._actor import Actor

ActorKey = tuple[str, str]


class Activations:
    """The actors active in memory, and the order their turns run in.

    A turn takes its actor's slot synchronously, then waits on the slot's lock, so turns of
    one actor run one at a time in the order they were started. The state is loaded by the
    first turn, after any commit of a previous activation of the same actor is durable.

    With ``leases`` (hosts sharing a database), activating takes the actor's lease first,
    and a slot whose lease this host no longer holds is loaded again under a new one.
    """

    def __init__(self, store: Store, runtime: Runtime, leases: LeaseKeeper | None = None) -> None:
        self._store = store
        self._runtime = runtime
        self._leases = leases
        self._slots: dict[ActorKey, ActorSlot] = {}
        self._tails: dict[ActorKey, asyncio.Future[None]] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def active(self, binding: str, instance: str) -> ActorSlot | None:
        """The slot of an active actor, if it is active."""
        return self._slots.get((binding, instance))

    @asynccontextmanager
    async def turn(
        self, cls: type[Actor], instance: str, *, activate: bool = True
    ) -> AsyncIterator[ActorSlot]:
        """Hold the actor's turn lock, activating it first unless ``activate`` is false.

        Raises:
            LeasedElsewhere: another host holds the actor (when activating).
        """
        key = (cls.binding, instance)
        while True:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = ActorSlot(cls, instance, self._runtime)
            slot.users += 1
            try:
                async with slot.lock:
                    if slot.lost:
                        continue
                    if activate:
                        try:
                            await self.activate(slot)
                        except LeasedElsewhere:
                            self.lose(slot)
                            raise
                    slot.last_used = self._runtime.clock.now()
                    yield slot
                    return
            finally:
                slot.users -= 1

    async def activate(self, slot: ActorSlot) -> None:
        """Load the actor's state (once) and create its object (after a turn discarded it)."""
        key = (slot.binding, slot.instance)
        if self._leases is not None and (
            slot.lease is None or self._leases.lease(key) != slot.lease
        ):
            # Another host may have run the actor since this one last held it: reload.
            slot.lease = None
            slot.loaded = False
            slot.actor = None
            slot.lease = await self._leases.acquire(*key)
        if not slot.loaded:
            tail = self.tail(*key)
            if tail is not None:
                await asyncio.wait([tail])
            slot.state, slot.keys = await self._store.load_actor(*key)
            slot.loaded = True
        if slot.actor is None:
            token = ACTIVATING.set(slot)
            try:
                slot.actor = slot.cls()
            finally:
                ACTIVATING.reset(token)

    def track(self, slot: ActorSlot, future: asyncio.Future[None]) -> None:
        """Remember the actor's latest commit, which a later activation must wait for."""
        # Kept until replaced or the actor goes (a done one is as good as none): a callback
        # to drop each one when done would cost every turn a closure and a loop callback.
        self._tails[(slot.binding, slot.instance)] = future

    def tail(self, binding: str, instance: str) -> asyncio.Future[None] | None:
        """The actor's latest commit still in flight, if any."""
        tail = self._tails.get((binding, instance))
        return None if tail is None or tail.done() else tail

    def discard_instance(self, slot: ActorSlot) -> None:
        """Drop the actor object after a turn raised; state stays, a fresh object is made."""
        slot.actor = None

    def lose(self, slot: ActorSlot) -> None:
        """Throw away an actor's in-memory view: the next turn reloads it from the store."""
        slot.lost = True
        slot.actor = None
        key = (slot.binding, slot.instance)
        if self._slots.get(key) is slot:
            del self._slots[key]
        if self.tail(*key) is None:
            self._tails.pop(key, None)

    def forget(self, key: ActorKey) -> None:
        """Drop an idle actor from memory (its lease is gone); a busy one reloads on its next
        turn anyway."""
        slot = self._slots.get(key)
        if slot is not None and slot.users == 0 and self.tail(*key) is None:
            self.lose(slot)  # which drops its done tail too

    def evict_idle(self, now: float, idle_timeout: float) -> list[ActorKey]:
        """Evict actors unused for ``idle_timeout`` seconds; return which."""
        idle = [
            key
            for key, slot in self._slots.items()
            if slot.users == 0 and now - slot.last_used >= idle_timeout and self.tail(*key) is None
        ]
        for key in idle:
            self._slots.pop(key).lost = True
            self._tails.pop(key, None)
        return idle
