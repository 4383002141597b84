"""``ActorSystem``: activation, turns, the scheduler and inspection over one store."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx

from operation_chain import (
    DEFAULT_POLICY,
    Codec,
    ExecutionPolicy,
    OperationChain,
    execute_operation_chain_async,
)
from rpc import TransportError
from rpc._host import DownstreamListener, DownstreamMessage

from ._activation import Activations
from ._actor import Actor
from ._clock import Clock, ManualClock, SystemClock
from ._committer import Committer, PendingCommit
from ._dispatch import Dispatcher, Job, LocalCall
from ._errors import (
    ActorUnavailableError,
    CommitError,
    ContinuationNotFoundError,
    ContinuationStateError,
    InvalidArgumentError,
    SystemClosedError,
    UnknownActorError,
)
from ._fetch import FetchDispatcher
from ._inspection import info_of
from ._leases import LeasedElsewhere, LeaseKeeper
from ._options import RetryPolicy
from ._outcomes import cancellation, requeued
from ._records import ContinuationInfo, ContinuationStatus
from ._ref import ActorRef
from ._remote import Remotes
from ._scheduler import Scheduler
from ._store.base import Commit, ContinuationRow, RowUpdate, Store
from ._store.select import create_store, postgres_store
from ._timer import Timer
from ._turn import ActorSlot, Runtime, TurnBuffer, check_instance, current_turn, signal_send
from ._work import DISPATCHED, Outcome, RemoteCall, decode_outcome, encode_outcome

if TYPE_CHECKING:
    from ._store.hosted import HostedStore
    from ._store.postgres import PostgresStore

logger = logging.getLogger("continuation")

_PURGED_STATUSES = (ContinuationStatus.COMPLETED, ContinuationStatus.CANCELLED)


class ActorSystem:
    """Runs actors: activates them on first use, runs their turns one at a time, commits
    each turn atomically, and fires their continuations when due.

    Use it as an async context manager (or call ``start()`` and ``aclose()``)::

        async with ActorSystem("app.db", actors=[Reminder]) as system:
            cid = await system.get(Reminder, "r-1").remind("stretch")

    Args:
        database: an SQLite file path, ``":memory:"``, or a ``postgresql://`` URL (a
            database many processes can share; ``?search_path=schema`` picks a schema).
        actors: the actor classes this system runs.
        clock: ``SystemClock()`` by default; a ``ManualClock`` makes the system fire only
            when ``advance`` or ``drain`` is awaited.
        durability: ``"full"`` fsyncs every commit; ``"normal"`` survives a process crash
            but may lose the last commits on power loss, for more throughput.
        retry: the retry policy of continuations that do not give their own.
        idle_timeout: seconds after which an unused actor is evicted from memory.
        retention: how long completed and cancelled continuations are kept (seconds or a
            timedelta); ``purge()`` and the scheduler's housekeeping delete older ones.
        signing_key: HMAC key for pickled values in storage (the trusted codec).
        policy: the execution policy for calls and handlers.
        batch_size: most continuations fetched and fired at once.
        fetch_concurrency: most proxy-fetch requests in flight at once.
        max_fetch_body: the largest proxy-fetch response body accepted, in bytes; a larger
            one is a ``FetchError``, never read past the limit.
        http_client: the ``httpx.AsyncClient`` proxy-fetches are sent with (you close it);
            by default the system makes one.
        remotes: bindings served by other hosts, mapped to the URL of their RPC endpoint
            (``ws://host:port/rpc`` or ``http://...``): remote calls to them go through the
            RPC client, each with the continuation id as its idempotency key.
        remote_headers: headers sent to those hosts (an ``Authorization`` token, say).
        timer: wakes the system from outside instead of the scheduler's own loop, e.g.
            ``continuation.bouncer.BouncerTimer`` (see ``docs/bouncer.md``).
        host_id: this host's id among the hosts sharing a PostgreSQL database; unique among
            live hosts, and best kept across restarts (a restarted host takes its actors
            back at once instead of waiting for its old leases to expire). Random by default.
        address: the RPC URL (``ws://host:port/rpc``) other hosts sharing the database
            forward calls to when this host holds an actor; ``serve`` sets it.
        lease_ttl: seconds a host's lease on an actor lasts without renewal (renewed every
            third of it): how long a dead host's actors wait before another host takes them.
    """

    def __init__(
        self,
        database: str | os.PathLike[str] = ":memory:",
        *,
        actors: Iterable[type[Actor]] = (),
        clock: Clock | None = None,
        durability: Literal["full", "normal"] = "full",
        retry: RetryPolicy | None = None,
        idle_timeout: float = 300.0,
        retention: float | timedelta = timedelta(days=7),
        signing_key: bytes | None = None,
        policy: ExecutionPolicy | None = None,
        batch_size: int = 512,
        fetch_concurrency: int = 64,
        max_fetch_body: int = 10 * 2**20,
        http_client: httpx.AsyncClient | None = None,
        remotes: Mapping[str, str] | None = None,
        remote_headers: Mapping[str, str] | None = None,
        timer: Timer | None = None,
        host_id: str | None = None,
        address: str | None = None,
        lease_ttl: float = 10.0,
    ) -> None:
        if not isinstance(database, str | os.PathLike):
            raise TypeError(
                "database must be a path, ':memory:' or a postgresql:// URL,"
                f" not {type(database).__name__}"
            )
        if durability not in ("full", "normal"):
            raise InvalidArgumentError(f"durability must be 'full' or 'normal', not {durability!r}")
        self._classes = _registry(actors)
        self._clock = clock if clock is not None else SystemClock()
        if isinstance(self._clock, type) or not isinstance(self._clock, Clock):
            raise TypeError(f"clock must be a Clock instance (with now()), not {clock!r}")
        if policy is not None and not isinstance(policy, ExecutionPolicy):
            raise TypeError(f"policy must be an ExecutionPolicy, not {type(policy).__name__}")
        if timer is not None and (isinstance(timer, type) or not isinstance(timer, Timer)):
            raise TypeError(f"timer must be a Timer (e.g. BouncerTimer), not {timer!r}")
        self._timer = timer
        if host_id is not None and (not isinstance(host_id, str) or not 0 < len(host_id) <= 200):
            raise InvalidArgumentError(f"host_id is a str of 1 to 200 characters, not {host_id!r}")
        self._host_id = host_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if address is not None and urlsplit(str(address)).scheme not in (
            "ws",
            "wss",
            "http",
            "https",
        ):
            raise InvalidArgumentError(f"address must be a ws:// or http:// URL, not {address!r}")
        self.address = address
        self._lease_ttl = _positive("lease_ttl", lease_ttl)
        self._leases: LeaseKeeper | None = None
        self._hosted: HostedStore | None = None  # the store, when shared with other hosts
        self._adopting: set[asyncio.Task[None]] = set()
        self._unleased: set[tuple[str, str]] = set()  # evicted, lease not yet given up
        if signing_key is not None and not isinstance(signing_key, bytes):
            raise TypeError(f"signing_key must be bytes, not {type(signing_key).__name__}")
        if signing_key is not None and len(signing_key) < 16:
            raise InvalidArgumentError("signing_key must be at least 16 bytes")
        self._idle_timeout = _positive("idle_timeout", idle_timeout)
        seconds = retention.total_seconds() if isinstance(retention, timedelta) else retention
        self._retention = _positive("retention", seconds)
        self._batch_size = int(_positive("batch_size", batch_size))
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        self._runtime = Runtime(
            codec=Codec(trusted=True, signing_key=signing_key),
            clock=self._clock,
            policy=policy or DEFAULT_POLICY,
            retry=retry or RetryPolicy(),
            actors=frozenset(self._classes),
            bindings=frozenset(self._classes) | frozenset(remotes or {}),
        )
        self._remotes = Remotes(remotes or {}, headers=remote_headers)
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise TypeError(
                f"http_client must be an httpx.AsyncClient, not {type(http_client).__name__}"
            )
        self._fetch_options = {
            "client": http_client,
            "concurrency": int(_positive("fetch_concurrency", fetch_concurrency)),
            "max_body_bytes": int(_positive("max_fetch_body", max_fetch_body)),
        }
        self._store: Store = create_store(database, durability=durability)
        self._listeners: list[DownstreamListener] = []
        self._state: Literal["new", "running", "closed"] = "new"
        self._loop_task: asyncio.Task[None] | None = None
        self._last_purge = -float("inf")
        self._purging: asyncio.Task[int] | None = None

    def __repr__(self) -> str:
        names = ", ".join(sorted(self._classes))
        return f"<ActorSystem {self._store!r} actors=[{names}] {self._state}>"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and start the scheduler (unless the clock is manual)."""
        if self._state != "new":
            raise SystemClosedError(f"the system is {self._state}; create a new one")
        await self._store.open()
        postgres = postgres_store(self._store)
        if postgres is not None and self._classes:
            # A system with no actor classes only inspects and changes rows (the command
            # line's): it runs no actor, so it takes no lease and joins no hosts.
            try:
                await self._join_hosts(postgres)
            except BaseException:
                await self._store.close()
                raise
        self._activations = Activations(self._store, self._runtime, self._leases)
        self._committer = Committer(self._store, on_committed=self._committed, on_lost=self._lost)
        self._scheduler = Scheduler(
            store=self._store,
            activations=self._activations,
            committer=self._committer,
            runtime=self._runtime,
            classes=self._classes,
            batch_size=self._batch_size,
            housekeeping=self._housekeeping,
            dispatch=self._dispatch_row,
            on_notice=None if self._timer is None else self._timer.notice,
        )
        self._dispatcher = Dispatcher(
            store=self._store,
            committer=self._committer,
            runtime=self._runtime,
            local_calls=self._calls_for,
            remotes=self._remotes,
            fetcher=lambda: FetchDispatcher(**self._fetch_options),  # type: ignore[arg-type]
            # On the manual clock nothing fires until advanced; hosts sharing the database
            # fire only the rows they claimed from it.
            firing=None
            if isinstance(self._clock, ManualClock) or self._leases is not None
            else self._scheduler,
        )
        self._state = "running"
        if self._classes:  # a system with no actors sends no work
            await self._dispatcher.resume()
        if self._hosted is not None:
            await self._hosted.store.listen(self._scheduler.notice)
        if self._timer is not None:
            # An outside timer hears of due times and wakes the system: no loop of its own.
            await self._timer.start(self)
        elif not isinstance(self._clock, ManualClock):
            idle_check = min(self._idle_timeout, 60.0)
            self._loop_task = asyncio.create_task(
                self._scheduler.run(idle_check=idle_check), name="continuation-scheduler"
            )

    async def aclose(self) -> None:
        """Stop firing, commit what already ran, and close the store; idempotent."""
        if self._state != "running":
            self._state = "closed"
            return
        self._state = "closed"
        if self._timer is not None:
            await self._timer.aclose()
        for task in (self._loop_task, self._purging, *self._adopting):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._dispatcher.aclose()
        await self._scheduler.close()
        await self._committer.close()
        await self._remotes.aclose()
        if self._leases is not None:
            await self._leases.aclose()
        await self._store.close()

    async def _join_hosts(self, store: PostgresStore) -> None:
        """Register as one of the hosts sharing ``store``, and see the store as this host."""
        from ._store.hosted import HostedStore  # with asyncpg: only PostgreSQL needs them
        from ._store.postgres_hosts import HostDirectory

        directory = HostDirectory(store.pool)
        self._leases = LeaseKeeper(
            directory,
            host=self._host_id,
            address=self.address,
            ttl=self._lease_ttl,
            on_lost=lambda key: self._activations.forget(key),
            on_taken=self._adopt,
            on_tick=self._take_over,
            status=self._status,
        )
        self._store = self._hosted = HostedStore(
            store, directory, host=self._host_id, ttl=self._lease_ttl,
            claimed=self._leases.claimed,
        )  # fmt: skip
        await self._leases.start()

    def _adopt(self, actors: list[tuple[str, str]]) -> None:
        """This host just took the leases of ``actors``: send again the work still out for
        them (their previous host is gone, or it had none out)."""
        task = asyncio.get_running_loop().create_task(self._send_adopted(actors))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def _send_adopted(self, actors: list[tuple[str, str]]) -> None:
        try:
            assert self._hosted is not None
            rows = await self._hosted.waiting_of(actors, DISPATCHED)
        except Exception:
            logger.exception("reading the work out for %d adopted actors failed", len(actors))
            return
        if self._state == "running":
            for row in rows:
                self._dispatch_row(row, row.revision)

    async def _take_over(self) -> None:
        """Send again the work of hosts that are gone, whose actors this host now holds."""
        assert self._hosted is not None
        for row in await self._hosted.taken_over(DISPATCHED):
            self._dispatch_row(row, row.revision)
        self._scheduler.notice(self._clock.now())

    def _status(self) -> dict[str, Any]:
        """What this host reports about itself into the hosts table."""
        return {
            "actors": len(self._activations),
            "leases": 0 if self._leases is None else len(self._leases),
            "firing": len(self._scheduler.in_flight),
            "queue": self._committer.queued + self._dispatcher.running,
            "heartbeat": None if self._leases is None else self._leases.last_heartbeat,
        }

    @property
    def host_id(self) -> str:
        """This host's id among hosts sharing a database; settable until the system starts
        (``serve --host-id`` sets it)."""
        return self._host_id

    @host_id.setter
    def host_id(self, value: str) -> None:
        if self._state != "new":
            raise SystemClosedError("a host's id can be set only before the system starts")
        if not isinstance(value, str) or not 0 < len(value) <= 200:
            raise InvalidArgumentError(f"host_id is a str of 1 to 200 characters, not {value!r}")
        self._host_id = value

    @property
    def timer(self) -> Timer | None:
        """The outside timer given as ``timer=``, if any."""
        return self._timer

    async def __aenter__(self) -> ActorSystem:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- calls -----------------------------------------------------------------------------

    def get(self, actor: type[Actor] | str, instance: str) -> ActorRef:
        """A reference to one actor; its awaited method calls run as turns."""
        cls = self._class_of(actor)
        check_instance(instance)
        return ActorRef(self, cls.binding, instance)

    def has_binding(self, binding: str) -> bool:
        """Whether an actor class is registered under ``binding``."""
        return binding in self._classes

    async def call(
        self,
        binding: str,
        instance: str,
        chain: OperationChain,
        *,
        principal: Any = None,
        policy: ExecutionPolicy | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Run ``chain`` against the actor in one turn; return its value once durable.

        Methods may be ``async def`` here (the turn holds the actor until they finish); the
        turn's effects commit only if it returns. Exceptions of the actor's code propagate
        unchanged, and leave no trace.

        With ``idempotency_key``, the value is stored with the turn's effects; a later call
        to the same actor with the same key (a caller retrying after a lost answer) returns
        that value without running again, until the key is purged with the retention
        period. A call that raised stored nothing, so the same key runs it again.
        """
        self._running()
        cls = self._class_of(binding)
        check_instance(instance)
        if not isinstance(chain, OperationChain):
            raise TypeError(f"chain must be an OperationChain, not {type(chain).__name__}")
        if idempotency_key is not None and not isinstance(idempotency_key, str):
            raise TypeError(f"idempotency_key must be a str, not {type(idempotency_key).__name__}")
        try:
            return await self._call_here(cls, instance, chain, principal, policy, idempotency_key)
        except LeasedElsewhere as elsewhere:
            # Sent on with a key, so a retry after a dropped connection cannot run it twice.
            key = idempotency_key or f"forward-{uuid.uuid4().hex}"
            run_here = partial(self._call_here, cls, instance, chain, principal, policy, key)
            return await self._forward(elsewhere, chain, key, run_here)

    async def _call_here(
        self,
        cls: type[Actor],
        instance: str,
        chain: OperationChain,
        principal: Any,
        policy: ExecutionPolicy | None,
        idempotency_key: str | None,
    ) -> Any:
        async with self._activations.turn(cls, instance) as slot:
            if idempotency_key is not None:
                stored = await self._stored_answer(slot, idempotency_key)
                if stored is not None:
                    return stored[1]
            buffer = TurnBuffer(now=self._clock.now(), principal=principal)
            result = await self._run_turn(slot, buffer, chain, policy or self._runtime.policy)
            answer = None
            if idempotency_key is not None:
                answer = (idempotency_key, encode_outcome(self._runtime.codec, ("ok", result)))
            future = self._commit_turn(slot, buffer, answer=answer)
        if future is not None:
            await future
        return result

    async def _forward(
        self,
        elsewhere: LeasedElsewhere,
        chain: OperationChain,
        key: str,
        run_here: Callable[[], Awaitable[Any]],
    ) -> Any:
        """Run a call on the host holding its actor; if that host cannot be reached, wait
        for its lease to expire and run the call here (or wherever the actor went).

        Raises:
            ActorUnavailableError: the actor's host stayed unreachable, and kept its lease,
                for ``max(30, 3 * lease_ttl)`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(30.0, 3 * self._lease_ttl)
        while True:
            holder = elsewhere.holder
            expires_at = loop.time() + holder.expires_in
            if holder.address is not None:
                # A host that stalled accepts connections but never answers: give it a lease
                # period, then look again (by then its lease expired, or it is alive).
                patience = asyncio.timeout(self._lease_ttl)
                try:
                    async with patience:
                        return await self._remotes.forward(
                            holder.address, elsewhere.binding, elsewhere.instance, chain, key=key
                        )
                except TransportError as exc:
                    logger.info("host %s is unreachable (%s)", holder.host, exc)
                except TimeoutError:
                    if not patience.expired():
                        raise  # the actor's own TimeoutError
                    logger.info("host %s did not answer within its lease", holder.host)
            if expires_at > deadline:
                raise ActorUnavailableError(
                    f"{elsewhere.binding}/{elsewhere.instance} is held by host {holder.host!r},"
                    " which does not answer, and its lease runs for another"
                    f" {expires_at - loop.time():.1f} s"
                )
            await asyncio.sleep(max(0.0, expires_at - loop.time()) + 0.01)
            try:
                return await run_here()
            except LeasedElsewhere as again:
                elsewhere = again

    async def _run_turn(
        self, slot: ActorSlot, buffer: TurnBuffer, chain: OperationChain, policy: ExecutionPolicy
    ) -> Any:
        """Run ``chain`` on the slot's actor with ``buffer`` as its turn; a failure leaves
        no trace, in memory either."""
        slot.turn = buffer
        token = current_turn.set((self, slot))
        ok = False
        try:
            result = await execute_operation_chain_async(slot.actor, chain, policy=policy)
            ok = True
        finally:
            current_turn.reset(token)
            slot.turn = None
            if not ok:
                self._activations.discard_instance(slot)
        return result

    async def _calls_for(self, calls: list[LocalCall]) -> list[asyncio.Future[None] | None]:
        """Same-system remote calls to one actor, each in a turn of its own under one hold
        of the actor's turn lock; each turn's transaction also stores its caller's result.
        Returns each call's commit once its turn has run (``None``: nothing to wait for)."""
        first = calls[0][0]
        cls = self._class_of(first.binding)
        futures: list[asyncio.Future[None] | None] = []
        try:
            async with self._activations.turn(cls, first.instance) as slot:
                for work, outcome_of, key in calls:
                    try:
                        future = await self._answer_call_for(slot, work, outcome_of, key)
                    except _LostWhileWaiting as lost:
                        # An earlier turn of the actor could not commit while this call
                        # waited, and that turn's call goes again: this one and the rest,
                        # which did not run, fail too and go again behind it, in order.
                        # Every future is settled first (the dispatcher reads them all
                        # once the last is done).
                        if submitted := [f for f in futures if f is not None]:
                            await asyncio.wait(submitted)
                        futures.extend(_failed(lost) for _ in calls[len(futures) :])
                        break
                    futures.append(future)
        except LeasedElsewhere:
            # Another host holds the actor (hosts sharing a database): each call goes there.
            for work, outcome_of, key in calls[len(futures) :]:
                settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                try:
                    await self._call_for(work, outcome_of, key)
                except CommitError as exc:
                    settled.set_exception(exc)
                else:
                    settled.set_result(None)
                futures.append(settled)
        return futures

    async def _call_for(
        self, work: RemoteCall, outcome_of: Callable[[Outcome], RowUpdate], key: str
    ) -> None:
        """A same-system remote call: the target's turn, whose transaction also stores the
        caller's result; a call that raises stores the caller's error alone. A target
        another host holds gets the call there, under idempotency ``key``."""
        try:
            await self._call_for_here(work, outcome_of, key)
        except LeasedElsewhere as elsewhere:
            ran_here = object()

            async def run_here() -> object:
                await self._call_for_here(work, outcome_of, key)  # stores the outcome itself
                return ran_here

            outcome: Outcome
            try:
                value = await self._forward(elsewhere, work.call, key, run_here)
            except CommitError:
                raise  # the call ran here in the end, and its turn could not commit
            except Exception as exc:
                outcome = ("error", exc)
            else:
                if value is ran_here:
                    return
                outcome = ("ok", value)
            update = outcome_of(outcome)
            commit = Commit(work.binding, work.instance, self._clock.now(), update=update,
                            standalone=True)  # fmt: skip
            await self._committer.submit(commit, None)

    async def _call_for_here(
        self, work: RemoteCall, outcome_of: Callable[[Outcome], RowUpdate], key: str
    ) -> None:
        cls = self._class_of(work.binding)
        async with self._activations.turn(cls, work.instance) as slot:
            future = await self._answer_call_for(slot, work, outcome_of, key)
        if future is not None:
            await future

    async def _answer_call_for(
        self,
        slot: ActorSlot,
        work: RemoteCall,
        outcome_of: Callable[[Outcome], RowUpdate],
        key: str,
    ) -> asyncio.Future[None] | None:
        """Run the call in the slot's turn; return the commit to wait for."""
        # With hosts sharing the database the call may also reach this actor forwarded,
        # under the same key (its work sent again after a host died): one answer serves both.
        shared = self._leases is not None
        stored = await self._stored_answer(slot, key) if shared else None
        if slot.lost:
            raise _LostWhileWaiting(
                "an earlier turn of this actor could not commit while the call waited for it;"
                " nothing of the call ran"
            )
        standalone: Outcome
        if stored is not None:
            standalone = stored
        else:
            buffer = TurnBuffer(now=self._clock.now())
            try:
                result = await self._run_turn(slot, buffer, work.call, self._runtime.policy)
            except Exception as exc:
                standalone = ("error", exc)
            else:
                answer = None
                if shared:
                    answer = (key, encode_outcome(self._runtime.codec, ("ok", result)))
                return self._commit_turn(slot, buffer, outcome_of(("ok", result)), answer)
        commit = Commit(work.binding, work.instance, self._clock.now(),
                        update=outcome_of(standalone), standalone=True)  # fmt: skip
        return self._committer.submit(commit, None)

    async def _stored_answer(self, slot: ActorSlot, key: str) -> Outcome | None:
        """The answer stored for a call to the slot's actor under idempotency ``key``."""
        tail = self._activations.tail(slot.binding, slot.instance)
        if tail is not None:  # an earlier answer under this key may be committing
            await asyncio.wait([tail])
        stored = await self._store.call_result(slot.binding, slot.instance, key)
        return None if stored is None else decode_outcome(self._runtime.codec, stored)

    def _commit_turn(
        self,
        slot: ActorSlot,
        buffer: TurnBuffer,
        update: RowUpdate | None = None,
        answer: tuple[str, bytes] | None = None,
    ) -> asyncio.Future[None] | None:
        if (
            update is None
            and answer is None
            and not (
                buffer.writes or buffer.new or buffer.cancels or buffer.downstream or buffer.signals
            )
        ):
            # Nothing to write, but the answer may rest on an earlier turn still committing.
            return self._activations.tail(slot.binding, slot.instance)
        for cid in buffer.cancels:
            if cid in self._scheduler.in_flight:
                self._scheduler.revoked.add(cid)
        commit = slot.finish_turn(buffer)
        commit.update = update
        commit.call_result = answer
        future = self._committer.submit(commit, slot, buffer.downstream)
        self._activations.track(slot, future)
        return future

    async def signal(self, binding: str, instance: str, name: str, payload: Any = None) -> None:
        """Send signal ``name`` with ``payload`` to an actor: the oldest of its continuations
        waiting for that name (``strategy="signal"``) receives the payload at ``c.result``;
        with none waiting, the signal is kept for the next one that waits.

        Called during a turn of this system (an ``async def`` actor method), the signal is
        part of that turn and commits with it; otherwise it commits on its own before this
        returns. A synchronous handler sends with ``self.signal(...)``.

        Raises:
            UnknownActorError: ``binding`` is not registered.
            InvalidArgumentError: an empty name, or one over 200 characters.
        """
        self._running()
        send = signal_send(self._runtime, binding, instance, name, payload)
        running = current_turn.get()
        if running is not None and running[0] is self and running[1].turn is not None:
            running[1].turn.add_signal(send)
            return
        commit = Commit(binding, instance, self._clock.now(), signals=[send], standalone=True)
        await self._committer.submit(commit, None)

    def add_downstream_listener(self, listener: DownstreamListener) -> Callable[[], None]:
        """Call ``listener`` with every downstream message once its turn has committed."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # -- continuations ---------------------------------------------------------------------

    async def continuation(self, cid: str) -> ContinuationInfo:
        """One continuation, with its audit trail."""
        row = await self._row(cid)
        audit = await self._store.audit(cid)
        return info_of(row, running=cid in self._scheduler.in_flight, audit=audit)

    async def continuations(
        self,
        *,
        status: ContinuationStatus | str | Sequence[ContinuationStatus | str] | None = None,
        binding: str | None = None,
        instance: str | None = None,
        limit: int = 1000,
    ) -> list[ContinuationInfo]:
        """Continuations matching every given filter, oldest first (without audit trails)."""
        self._running()
        for name, value in (("binding", binding), ("instance", instance)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        statuses = _statuses(status)
        rows = await self._store.find(
            statuses=statuses,
            binding=binding,
            instance=instance,
            limit=int(_positive("limit", limit)),
        )
        in_flight = self._scheduler.in_flight
        return [info_of(row, running=row.id in in_flight) for row in rows]

    async def cancel(self, cid: str) -> None:
        """Cancel a pending continuation; its error chain, if any, receives
        ``ContinuationCancelled`` in a turn of its own."""
        await self._change(cid, {ContinuationStatus.PENDING}, cancellation)

    async def retry(self, cid: str) -> None:
        """Re-queue a ``dead`` or ``version_mismatch`` continuation, due now."""
        await self._change(
            cid, {ContinuationStatus.DEAD, ContinuationStatus.VERSION_MISMATCH}, requeued
        )

    async def _change(
        self, cid: str, allowed: set[ContinuationStatus], change: Callable[..., RowUpdate]
    ) -> None:
        row = await self._row(cid)
        cls = self._classes.get(row.binding)
        if cls is None:
            # No turn of an unregistered actor can run here, so there is nothing to order with.
            await self._commit_change(row, allowed, change, None)
            return
        async with self._activations.turn(cls, row.instance, activate=False) as slot:
            tail = self._activations.tail(row.binding, row.instance)
            if tail is not None:
                await asyncio.wait([tail])
            await self._commit_change(await self._row(cid), allowed, change, slot)

    async def _commit_change(
        self,
        row: ContinuationRow,
        allowed: set[ContinuationStatus],
        change: Callable[..., RowUpdate],
        slot: ActorSlot | None,
    ) -> None:
        if row.status not in allowed or (change is cancellation and row.cancel_requested):
            state = "already cancelled" if row.cancel_requested else row.status
            verb = "cancel" if change is cancellation else "retry"
            raise ContinuationStateError(f"cannot {verb} continuation {row.id}: it is {state}")
        if change is requeued and row.key is not None:
            _, keys = await self._store.load_actor(row.binding, row.instance)
            holder = keys.get(row.key)
            if holder is not None:
                raise ContinuationStateError(
                    f"cannot retry continuation {row.id}: its key {row.key!r} is held by the"
                    f" pending continuation {holder}"
                )
        now = self._clock.now()
        update = change(row, now)
        if row.id in self._scheduler.in_flight:
            self._scheduler.revoked.add(row.id)
        future = self._committer.submit(Commit(row.binding, row.instance, now, update=update), None)
        if slot is not None:
            self._activations.track(slot, future)
        await future
        if row.key is not None and slot is not None and slot.loaded and not slot.lost:
            if update.status == ContinuationStatus.PENDING and not update.cancel_requested:
                slot.keys[row.key] = row.id
            else:
                slot.keys.pop(row.key, None)
        if update.due_at is not None:
            self._scheduler.notice(update.due_at)

    async def purge(self) -> int:
        """Delete completed and cancelled continuations older than the retention period."""
        self._running()
        cutoff = self._clock.now() - self._retention
        return await self._store.purge(finished_before=cutoff, statuses=_PURGED_STATUSES)

    # -- time ------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Run everything due now, including what those turns make due now; work already
        sent out (remote calls, fetches) is waited for, and its outcome delivered."""
        self._running()
        await self._settle()

    async def _settle(self) -> None:
        """Fire what is due and wait for the work out now, until neither leaves anything."""
        while True:
            applied = self._committer.applied
            fired = await self._scheduler.drain()
            worked = await self._dispatcher.settle()
            # Another look unless nothing at all happened: a firing may have sent work out
            # just as the dispatcher was asked, and on PostgreSQL a row being committed while
            # the scheduler claimed was skipped (SKIP LOCKED) rather than waited for.
            if not (fired or worked or self._committer.applied != applied):
                return

    async def advance(self, seconds: float) -> None:
        """Move a manual clock forward, running everything that falls due on the way, in order,
        with the clock standing at each due time while its turn runs. Work already sent out
        (remote calls, fetches) is not waited for, so a timeout can overtake it; ``drain``
        waits for it."""
        self._running()
        clock = self._clock
        if not isinstance(clock, ManualClock):
            raise InvalidArgumentError("advance() needs ActorSystem(clock=ManualClock())")
        target = clock.now() + _positive("seconds", seconds, allow_zero=True)
        while (due := await self._store.next_due()) is not None and due <= target:
            clock.set(due)
            await self._scheduler.drain()
        clock.set(target)
        await self._scheduler.drain()
        self._housekeeping()

    # -- internals -------------------------------------------------------------------------

    def _committed(self, batch: list[PendingCommit]) -> None:
        for pending in batch:
            commit = pending.commit
            for new in commit.new:
                if new.due_at is not None:
                    self._scheduler.notice(new.due_at)
                if new.wait_name is not None:  # it may have taken a buffered signal
                    self._scheduler.notice(commit.now)
                job = Job.of_new(new, commit.now)
                if job is not None:
                    self._dispatcher.dispatch(job)
            if commit.cancels or commit.signals:
                self._scheduler.notice(commit.now)
            for cid in commit.cancels:
                self._dispatcher.abort(cid)
            update = commit.update
            if update is not None:
                if update.due_at is not None:
                    self._scheduler.notice(update.due_at)
                if (
                    update.status != ContinuationStatus.PENDING
                    or update.phase != "waiting"
                    or update.cancel_requested
                ):  # nobody waits for the work any more: stop it
                    self._dispatcher.abort(update.id)
            for message in pending.downstream:
                self._deliver(message)

    def _dispatch_row(self, row: ContinuationRow, revision: int) -> None:
        job = Job.of_row(row, revision)
        if job is not None:
            self._dispatcher.dispatch(job)

    def _deliver(self, message: DownstreamMessage) -> None:
        for listener in list(self._listeners):
            try:
                listener(message)
            except Exception:
                logger.exception("a downstream listener failed")

    def _lost(self, slot: ActorSlot) -> None:
        self._activations.lose(slot)
        if self._leases is not None and slot.lease is not None:
            self._leases.forget((slot.binding, slot.instance), slot.lease)

    def _housekeeping(self) -> None:
        now = self._clock.now()
        evicted = self._activations.evict_idle(now, self._idle_timeout)
        if self._leases is not None:
            # An actor with work out keeps its lease until the work is back, so no other
            # host takes it over and sends that work a second time.
            self._unleased.update(evicted)
            busy = self._dispatcher.busy
            free = {
                key
                for key in self._unleased
                if key not in busy and self._activations.active(*key) is None
            }
            self._unleased -= free
            self._unleased -= {k for k in self._unleased if self._activations.active(*k)}
            self._leases.release(free)
        if now - self._last_purge >= min(self._retention, 3600.0) and self._purging is None:
            self._last_purge = now
            self._purging = asyncio.get_running_loop().create_task(self.purge())
            self._purging.add_done_callback(self._purged)

    def _purged(self, task: asyncio.Task[int]) -> None:
        self._purging = None
        if not task.cancelled() and task.exception() is not None:
            logger.error("purging finished continuations failed", exc_info=task.exception())

    async def _row(self, cid: str) -> ContinuationRow:
        self._running()
        if not isinstance(cid, str):
            raise TypeError(f"continuation ids are str, not {type(cid).__name__}")
        row = await self._store.get(cid)
        if row is None:
            raise ContinuationNotFoundError(f"no continuation has the id {cid!r}")
        return row

    def _running(self) -> None:
        if self._state != "running":
            raise SystemClosedError(
                "the actor system is not running; use 'async with ActorSystem(...)'"
                if self._state == "new"
                else "the actor system is closed"
            )

    def _class_of(self, actor: type[Actor] | str) -> type[Actor]:
        binding = getattr(actor, "binding", None) if isinstance(actor, type) else actor
        cls = self._classes.get(binding) if isinstance(binding, str) else None
        if cls is None or (isinstance(actor, type) and cls is not actor):
            raise UnknownActorError(f"{actor!r} is not registered with this ActorSystem")
        return cls


def _registry(actors: Iterable[type[Actor]]) -> dict[str, type[Actor]]:
    classes: dict[str, type[Actor]] = {}
    for cls in actors:
        if not (isinstance(cls, type) and issubclass(cls, Actor)) or cls is Actor:
            raise TypeError(f"actors must be Actor subclasses, not {cls!r}")
        if cls.binding in classes and classes[cls.binding] is not cls:
            raise InvalidArgumentError(f"two actor classes use the binding {cls.binding!r}")
        classes[cls.binding] = cls
    return classes


def _positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not (value >= 0 if allow_zero else value > 0) or value != value or value == float("inf"):
        sign = "non-negative" if allow_zero else "positive"
        raise InvalidArgumentError(f"{name} must be a finite {sign} number, not {value!r}")
    return float(value)


def _statuses(status: object) -> list[str] | None:
    if status is None:
        return None
    values = [status] if isinstance(status, str) else list(status)  # type: ignore[call-overload]
    try:
        return [ContinuationStatus(value).value for value in values]
    except ValueError:
        known = ", ".join(s.value for s in ContinuationStatus)
        raise InvalidArgumentError(f"unknown status in {status!r}; known: {known}") from None


def _failed(error: BaseException) -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future


class _LostWhileWaiting(CommitError):
    """A call found its actor's in-memory view thrown away (an earlier turn failed to
    commit) while it waited to run: it did not run, and goes again behind that turn's call."""
