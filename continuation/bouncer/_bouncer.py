"""The bouncer's core: register and cancel waits, and deliver them when they fall due.

Only the next due time and the waits being delivered right now are in memory; every pending
wait lives on disk, and due ones are read in batches through the index on their next
attempt's time. A delivery's outcome is recorded (group-committed, fsynced) before the wait
stops counting as in flight, so a wait whose success was recorded is never delivered again.
A success not yet recorded when the process dies is delivered again after the restart: the
callback contract is at-least-once, and receivers make it idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import uuid
from types import TracebackType
from typing import Final

import httpx
import orjson
import pydantic_core

from .._clock import Clock, ManualClock, SystemClock
from .._errors import InvalidArgumentError, SystemClosedError
from .._options import RetryPolicy
from ._errors import DelayOutOfRangeError, WaitNotFoundError, WaitStateError
from ._models import WaitRequest, checked_number
from ._records import NewWait, Outcome, Wait, WaitStatus
from ._signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, signing_key_bytes
from ._store.sqlite import WaitStore

logger = logging.getLogger("continuation.bouncer")

DEFAULT_DELIVERY_RETRY: Final = RetryPolicy(base_delay=2.0, max_delay=300.0, jitter=0.2)
_IDLE_CHECK: Final = 60.0
_POOL_SIZE: Final = 16
_ERROR_SNIPPET: Final = 200


class Bouncer:
    """Stores waits and calls their callbacks back when they are due.

    ``create_bouncer_app`` wraps one in HTTP; use it directly to embed the service. On the
    real clock ``start()`` runs the delivery loop; on a ``ManualClock`` nothing is delivered
    until ``drain()`` is awaited.

    Args:
        database: the SQLite file of the waits (``":memory:"`` for tests).
        signing_key: the HMAC key callbacks are signed with (at least 16 bytes).
        min_delay: the shortest wait accepted, in seconds.
        max_delay: the longest wait accepted, in seconds.
        callback_timeout: how long one callback may take, in seconds; the connection stays
            open while the receiver works.
        give_up_after: once a wait is this many seconds past due, a failed callback marks it
            ``failed`` instead of retrying.
        retry: the backoff between attempts (``max_attempts`` is not used: ``give_up_after``
            bounds the retries).
        clock: ``SystemClock()`` by default.
        max_concurrent: most callbacks in flight at once.
        batch_size: most due waits read at once.
        transport: the httpx transport of the callbacks (tests pass an ``ASGITransport``).
        rng: randomness of the retry jitter.
    """

    def __init__(
        self,
        database: str | os.PathLike[str],
        *,
        signing_key: bytes | str,
        min_delay: float = 60.0,
        max_delay: float = 7200.0,
        callback_timeout: float = 900.0,
        give_up_after: float = 86400.0,
        retry: RetryPolicy = DEFAULT_DELIVERY_RETRY,
        clock: Clock | None = None,
        max_concurrent: int = 256,
        batch_size: int = 512,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(database, str | os.PathLike):
            raise TypeError(f"database must be a path or ':memory:', not {type(database).__name__}")
        self._key = signing_key_bytes(signing_key)
        self.min_delay = checked_number("min_delay", min_delay, allow_zero=True)
        self.max_delay = checked_number("max_delay", max_delay)
        if self.min_delay > self.max_delay:
            raise InvalidArgumentError(
                f"min_delay ({min_delay}) must not be greater than max_delay ({max_delay})"
            )
        self._timeout = checked_number("callback_timeout", callback_timeout)
        self._give_up_after = checked_number("give_up_after", give_up_after, allow_zero=True)
        if not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        self._retry = retry
        self.clock: Clock = clock if clock is not None else SystemClock()
        if isinstance(self.clock, type) or not isinstance(self.clock, Clock):
            raise TypeError(f"clock must be a Clock instance (with now()), not {clock!r}")
        self._max_concurrent = int(checked_number("max_concurrent", max_concurrent))
        self._batch_size = int(checked_number("batch_size", batch_size))
        self._refill = max(1, min(self._batch_size, self._max_concurrent // 8))
        self._transport = transport
        self._rng = rng if rng is not None else random.Random()
        self.store = WaitStore(os.fspath(database))
        self._clients: list[httpx.AsyncClient] = []
        self._turn = 0
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._sleep_until = math.inf
        self._reading = 0
        self._settled: set[str] = set()
        self._state = "new"
        self.in_flight: set[str] = set()

    def __repr__(self) -> str:
        return f"<Bouncer {self.store!r} {self._state}>"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and, on the real clock, start delivering."""
        if self._state != "new":
            raise SystemClosedError(f"the bouncer is {self._state}; create a new one")
        await self.store.open()
        timeout = httpx.Timeout(self._timeout, connect=min(self._timeout, 10.0))
        # Several small connection pools, not one big one: httpcore scans every connection
        # of a pool for each request, which costs more than the request once there are many.
        shards = -(-self._max_concurrent // _POOL_SIZE)
        limits = httpx.Limits(max_connections=-(-self._max_concurrent // shards))
        tls = httpx.create_ssl_context()  # one for all: each costs memory and start-up time
        self._clients = [
            httpx.AsyncClient(timeout=timeout, limits=limits, verify=tls, transport=self._transport)
            for _ in range(shards)
        ]
        self._state = "running"
        if not isinstance(self.clock, ManualClock):
            self._loop_task = asyncio.get_running_loop().create_task(
                self._run(), name="bouncer-delivery"
            )

    async def aclose(self) -> None:
        """Stop delivering (callbacks in flight are abandoned, and retried after a restart)
        and close the store; idempotent."""
        if self._state != "running":
            self._state = "closed"
            return
        self._state = "closed"
        tasks = [task for task in (self._loop_task, *self._tasks) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in self._clients:
            await client.aclose()
        await self.store.close()

    async def __aenter__(self) -> Bouncer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the API ---------------------------------------------------------------------------

    async def register(self, request: WaitRequest) -> tuple[Wait, bool]:
        """Store a wait; return it and whether it is new (``False``: its key already held one).

        Raises:
            DelayOutOfRangeError: it is due sooner than ``min_delay`` or later than
                ``max_delay`` from now.
        """
        self._running()
        now = self.clock.now()
        due = request.due_at(now)
        if not self.min_delay <= due - now <= self.max_delay:
            given = "delay" if request.delay is not None else "at minus now"
            raise DelayOutOfRangeError(
                f"{given} must be between {self.min_delay:g} and {self.max_delay:g} seconds,"
                f" not {due - now:g}",
                min_delay=self.min_delay,
                max_delay=self.max_delay,
            )
        payload = pydantic_core.to_json(request.payload).decode()
        new = NewWait(uuid.uuid4().hex, request.key, request.callback, payload, due, now)
        wait, created = await self.store.insert(new, due)
        if created:
            self._notice(due)
        return wait, created

    async def get(self, wait_id: str) -> Wait:
        """The wait with that id.

        Raises:
            WaitNotFoundError: no wait has that id.
        """
        self._running()
        wait = await self.store.get(wait_id)
        if wait is None:
            raise WaitNotFoundError(f"no wait has the id {wait_id!r}")
        return wait

    async def cancel(self, wait_id: str) -> Wait:
        """Cancel a pending wait and return it.

        Raises:
            WaitNotFoundError: no wait has that id.
            WaitStateError: it is being delivered, or no longer pending.
        """
        await self.get(wait_id)
        if wait_id in self.in_flight:
            raise WaitStateError(f"wait {wait_id} is being delivered right now")
        if not await self.store.cancel(wait_id, self.clock.now()):
            current = await self.get(wait_id)
            raise WaitStateError(f"cannot cancel wait {wait_id}: it is {current.status}")
        if self._reading:
            self._settled.add(wait_id)
        return await self.get(wait_id)

    # -- delivery --------------------------------------------------------------------------

    async def deliver_due(self) -> int:
        """Start delivering what is due now, one batch; return how many were started."""
        self._running()
        room = min(self._max_concurrent - len(self.in_flight), self._batch_size)
        if room <= 0:
            return 0
        self._reading += 1
        try:
            due = await self.store.fetch_due(self.clock.now(), room, skip=set(self.in_flight))
        finally:
            self._reading -= 1
        settled = set(self._settled)
        if not self._reading:
            self._settled.clear()
        # The read may predate the commit of a delivery that settled meanwhile: skip those.
        due = [wait for wait in due if wait.id not in self.in_flight and wait.id not in settled]
        for wait in due:
            self.in_flight.add(wait.id)
            task = asyncio.get_running_loop().create_task(self._deliver(wait))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(due)

    async def drain(self) -> None:
        """Deliver everything due now and wait until every outcome is recorded."""
        while True:
            started = await self.deliver_due()
            busy = set(self._tasks)
            if busy:
                await asyncio.wait(busy)
            if not started and not busy:
                return

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                if await self.deliver_due():
                    continue
                if len(self.in_flight) >= self._max_concurrent:
                    due = None  # a finishing delivery wakes the loop
                else:
                    due = await self.store.next_due(skip=set(self.in_flight))
            except Exception:
                logger.exception("the delivery loop failed; trying again in a second")
                await asyncio.sleep(1.0)
                continue
            self._sleep_until = math.inf if due is None else due
            wait = _IDLE_CHECK if due is None else max(0.0, due - self.clock.now())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, _IDLE_CHECK)):
                    await self._wake.wait()

    def _notice(self, due: float) -> None:
        if due < self._sleep_until:
            self._sleep_until = due
            self._wake.set()

    async def _deliver(self, wait: Wait) -> None:
        try:
            await self._record(await self._attempt(wait))
        finally:
            self.in_flight.discard(wait.id)
            if self._reading:
                self._settled.add(wait.id)
            # With every slot busy, refill once a batch's worth is free, not after each one.
            if self._max_concurrent - len(self.in_flight) >= self._refill:
                self._wake.set()

    async def _record(self, outcome: Outcome) -> None:
        # Until the outcome is durable the wait stays in flight, so it is not sent again.
        failures = 0
        while True:
            try:
                await self.store.record(outcome)
                return
            except Exception:
                failures += 1
                logger.exception("recording the outcome of wait %s failed", outcome.id)
                await asyncio.sleep(min(_IDLE_CHECK, 0.05 * 2.0**failures))

    async def _attempt(self, wait: Wait) -> Outcome:
        self._turn = (self._turn + 1) % len(self._clients)
        client = self._clients[self._turn]
        body = callback_body(wait)
        timestamp = str(int(self.clock.now()))
        headers = {
            "content-type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._key, timestamp, body),
            "x-bouncer-attempt": str(wait.attempts + 1),
        }
        error: str | None
        try:
            response = await client.post(wait.callback, content=body, headers=headers)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        else:
            ok = 200 <= response.status_code < 300
            error = None if ok else f"HTTP {response.status_code}: {response.text[:_ERROR_SNIPPET]}"
        return self._outcome(wait, error)

    def _outcome(self, wait: Wait, error: str | None) -> Outcome:
        attempts = wait.attempts + 1
        now = self.clock.now()
        if error is None:
            return Outcome(wait.id, WaitStatus.DELIVERED, None, attempts, None, now)
        if now - wait.due_at >= self._give_up_after:
            logger.warning("giving up on wait %s after %d attempts: %s", wait.id, attempts, error)
            return Outcome(wait.id, WaitStatus.FAILED, None, attempts, error, now)
        next_at = now + self._retry.delay(attempts, self._rng)
        logger.info("the callback of wait %s failed (%s); retrying", wait.id, error)
        return Outcome(wait.id, WaitStatus.PENDING, next_at, attempts, error, now)

    def _running(self) -> None:
        if self._state != "running":
            raise SystemClosedError(
                "the bouncer is not running; use 'async with Bouncer(...)'"
                if self._state == "new"
                else "the bouncer is closed"
            )


def callback_body(wait: Wait) -> bytes:
    """The JSON body POSTed to a wait's callback: ``{"id", "payload", "due_at"}``."""
    head = orjson.dumps({"id": wait.id, "due_at": wait.due_at})
    return head[:-1] + b',"payload":' + wait.payload.encode() + b"}"
