"""This host's leases on actors, when several hosts share one database.

An actor is active on at most one host: the host takes a lease on it when it activates it,
renews it (in bulk, with its heartbeat) while it holds it, and gives it up on eviction and
shutdown. Every commit of a turn carries the lease it ran under and the database refuses it
unless that lease is still current, so a host that stalls past its lease cannot commit.

The keeper also stops trusting its leases on its own once it has not renewed them for a
lease period (the database was unreachable, or the process was paused): the next turn of
each actor takes its lease again, reloading the actor, before it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._store.base import ActorKey, Holder, Lease
from ._uploader import CoalescingUploader

if TYPE_CHECKING:
    from ._store.postgres_hosts import HostDirectory

logger = logging.getLogger("continuation")


class LeasedElsewhere(Exception):
    """The actor is leased by another live host; the call belongs there."""

    def __init__(self, binding: str, instance: str, holder: Holder) -> None:
        super().__init__(f"{binding}/{instance} is leased by host {holder.host!r}")
        self.binding = binding
        self.instance = instance
        self.holder = holder


class LeaseKeeper:
    """Takes, renews and gives up this host's leases, and reports its status.

    Args:
        directory: the database's hosts and leases.
        host: this host's id, unique among live hosts.
        address: the RPC URL other hosts forward calls to, or ``None``.
        ttl: seconds a lease lasts without renewal; renewed every third of that.
        on_lost: called with an actor whose lease this host lost, to drop its memory.
        on_taken: called with actors whose leases this host has just taken over (held
            before, by another host or by this one before a restart), to send again the
            work still out for them.
        on_tick: called after each renewal (to take over the work of dead hosts).
        status: the status report to upload after each renewal.
    """

    def __init__(
        self,
        directory: HostDirectory,
        *,
        host: str,
        address: str | None,
        ttl: float,
        on_lost: Callable[[ActorKey], None],
        on_taken: Callable[[list[ActorKey]], None],
        on_tick: Callable[[], Any],
        status: Callable[[], Mapping[str, Any]],
    ) -> None:
        self.directory = directory
        self.host = host
        self.address = address
        self.ttl = ttl
        self._on_lost = on_lost
        self._on_taken = on_taken
        self._on_tick = on_tick
        self._status = status
        self._held: dict[ActorKey, int] = {}
        self._trusted_until = 0.0  # monotonic time until which held leases are trusted
        self._task: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()
        self._uploader = CoalescingUploader[Mapping[str, Any]](
            lambda status: directory.report(host, status),
            merge=lambda _old, new: new,
            name="host status uploader",
        )
        self.last_heartbeat: float | None = None

    def __len__(self) -> int:
        return len(self._held)

    async def start(self) -> None:
        """Register this host and start renewing."""
        started = time.monotonic()
        await self.directory.register(self.host, self.address, self.ttl)
        self._trusted_until = started + self.ttl
        self.last_heartbeat = time.time()
        self._task = asyncio.get_running_loop().create_task(
            self._renewing(), name="continuation-leases"
        )

    async def aclose(self) -> None:
        """Stop renewing, give up every lease and mark this host stopped."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
        await self._uploader.aclose()
        self._held.clear()
        try:
            await self.directory.stop(self.host)
        except Exception:
            logger.warning("could not mark host %s stopped; its leases will expire", self.host)

    def lease(self, key: ActorKey) -> Lease | None:
        """The lease this host holds on an actor, if it still trusts it."""
        epoch = self._held.get(key)
        if epoch is None or time.monotonic() >= self._trusted_until:
            return None
        return Lease(self.host, epoch)

    async def acquire(self, binding: str, instance: str) -> Lease:
        """A lease on the actor: the one held and trusted, or a new one.

        Raises:
            LeasedElsewhere: another live host holds it.
        """
        key = (binding, instance)
        lease = self.lease(key)
        if lease is not None:
            return lease
        if time.monotonic() >= self._trusted_until:
            await self.renew()  # after a pause: find out what is still ours first
            lease = self.lease(key)
            if lease is not None:
                return lease
        taken = await self.directory.acquire(self.host, binding, instance, self.ttl)
        if isinstance(taken, Holder):
            raise LeasedElsewhere(binding, instance, taken)
        self._held[key] = taken.epoch
        if taken.epoch > 1:  # held before, perhaps by a host that died with work out
            self._on_taken([key])
        return taken

    def claimed(self, leases: Mapping[ActorKey, int], *, adopt: bool = True) -> None:
        """Leases taken while claiming rows: hold them (and, with ``adopt``, send again the
        work still out for their actors)."""
        for key, epoch in leases.items():
            if self._held.get(key, epoch) != epoch:
                self._on_lost(key)
            self._held[key] = epoch
        adopted = [key for key, epoch in leases.items() if epoch > 1]
        if adopt and adopted:
            self._on_taken(adopted)

    def held(self) -> set[ActorKey]:
        """The actors this host holds leases on."""
        return set(self._held)

    def forget(self, key: ActorKey, lease: Lease) -> None:
        """Stop trusting ``lease`` on one actor (a commit under it was refused): the next
        turn takes the actor's lease again, with a new epoch, and reloads the actor. A lease
        already taken again is kept: turns of the old one still committing must not make
        this host give up the new one, or each would fence off the next."""
        if self._held.get(key) == lease.epoch:
            del self._held[key]

    def release(self, actors: Iterable[ActorKey]) -> None:
        """Give up the leases on ``actors`` (evicted), in the background."""
        keys = [key for key in actors if self._held.pop(key, None) is not None]
        if not keys:
            return
        task = asyncio.get_running_loop().create_task(self._release(keys))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, keys: list[ActorKey]) -> None:
        try:
            await self.directory.release(self.host, keys)
        except Exception:
            logger.warning("could not give up %d leases; they will expire", len(keys))

    async def renew(self) -> None:
        """Renew the heartbeat and every lease still held; forget (and report lost) those
        the database no longer has as this host's under the same epoch."""
        started = time.monotonic()
        still = await self.directory.renew(self.host, self.ttl)
        self._trusted_until = started + self.ttl
        self.last_heartbeat = time.time()
        for key, epoch in list(self._held.items()):
            if still.get(key) != epoch:
                del self._held[key]
                self._on_lost(key)

    async def _renewing(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.renew()
            except Exception as exc:
                logger.warning("renewing the leases of host %s failed: %s", self.host, exc)
                continue
            with contextlib.suppress(Exception):
                self._uploader.report(self._status())
            try:
                await self._on_tick()
            except Exception:
                logger.exception("taking over the work of other hosts failed")
