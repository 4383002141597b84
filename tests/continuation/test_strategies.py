"""The remote-call, proxy-fetch and signal strategies in one system, on the manual clock.

Each hands work off the turn and replays the stored chain in a later turn with the work's
value at ``c.result`` or its exception at ``c.error``; the outbox is durable, a late outcome
is ignored and recorded, and cancellation reaches the error chain.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from typing import Any, ClassVar

import httpx
import pytest

from continuation import (
    Actor,
    ActorSystem,
    Continuation,
    ContinuationChainError,
    ContinuationOptionsError,
    ContinuationStatus,
    FetchRequest,
    FetchResponse,
    InvalidArgumentError,
    ManualClock,
    RetryPolicy,
    UnknownActorError,
)
from tests.postgres import PostgresDatabase

from .conftest import OpenSystem

GATE: dict[str, asyncio.Event] = {}
ALLOW_NEGATIVE = False  # flipped by tests: the target's cause of failure is fixed
BROKEN_HANDLER = False  # flipped by tests: a handler fails until fixed


class Billing(Actor):
    def charge(self, amount: int) -> str:
        if amount < 0 and not ALLOW_NEGATIVE:
            raise ValueError(f"cannot charge {amount}")
        self.storage.put("charged", self.storage.get("charged", 0) + amount)
        return f"receipt-{amount}"

    async def slow_charge(self, amount: int) -> str:
        await GATE.setdefault(self.instance, asyncio.Event()).wait()
        return self.charge(amount)

    def total(self) -> int:
        return int(self.storage.get("charged", 0))


class Orders(Actor):
    def log(self) -> list[Any]:
        return list(self.storage.get("log", []))

    def _note(self, *entry: Any) -> None:
        self.storage.put("log", [*self.storage.get("log", []), entry])

    def pay(
        self,
        amount: int,
        *,
        method: str = "charge",
        instance: str = "acme",
        errors: bool = True,
        **options: Any,
    ) -> str:
        c = Continuation(self)
        billing = Continuation(Billing)
        call = getattr(billing, method)(amount)
        return self.continue_(
            c.charged(c.result),
            c.charge_failed(c.error) if errors else None,
            strategy="remote-call",
            binding="Billing",
            instance=instance,
            call=call,
            **options,
        )

    def charged(self, receipt: str) -> None:
        if BROKEN_HANDLER:
            raise RuntimeError("a bug in the handler")
        self._note("charged", receipt)

    def charge_failed(self, error: BaseException) -> None:
        self._note("failed", type(error).__name__, str(error))

    def fetch(self, url: str, *, errors: bool = True, **options: Any) -> str:
        c = Continuation(self)
        return self.continue_(
            c.fetched(c.result),
            c.fetch_failed(c.error) if errors else None,
            strategy="proxy-fetch",
            request=FetchRequest(url=url),
            **options,
        )

    def fetch_raw(self, request: Any, **options: Any) -> str:
        c = Continuation(self)
        return self.continue_(
            c.fetched(c.result), strategy="proxy-fetch", request=request, **options
        )

    def fetched(self, response: FetchResponse) -> None:
        self._note("fetched", response.status, response.text)

    def fetch_failed(self, error: BaseException) -> None:
        self._note("fetch failed", type(error).__name__)

    def wait(self, name: str, *, errors: bool = True, **options: Any) -> str:
        c = Continuation(self)
        return self.continue_(
            c.signalled(name, c.result),
            c.not_signalled(name, c.error) if errors else None,
            strategy="signal",
            name=name,
            **options,
        )

    def signalled(self, name: str, payload: Any) -> None:
        self._note("signal", name, payload)

    def not_signalled(self, name: str, error: BaseException) -> None:
        self._note("no signal", name, type(error).__name__)

    def approve(self, instance: str, payload: Any, fail: bool = False) -> None:
        self.signal("Orders", instance, "approval", payload)
        if fail:
            raise RuntimeError("the turn fails, so its signal is never sent")

    async def approve_async(self, system: Any, instance: str, payload: Any) -> None:
        await system.signal("Orders", instance, "approval", payload)

    def cancel(self, cid: str) -> None:
        self.cancel_continuation(cid)


async def log_of(system: ActorSystem, instance: str = "o-1") -> list[Any]:
    return await system.get(Orders, instance).log()  # type: ignore[no-any-return]


# -- remote-call -------------------------------------------------------------------------------


async def test_a_remote_call_delivers_its_result_in_a_later_turn(open_system: OpenSystem) -> None:
    async with open_system(Orders, Billing) as system:
        cid = await system.get(Orders, "o-1").pay(30)
        await system.drain()
        assert await log_of(system) == [("charged", "receipt-30")]
        assert await system.get(Billing, "acme").total() == 30
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.COMPLETED
        assert "remote-call result received" in [event.event for event in info.audit]


async def test_the_targets_effects_and_the_callers_result_commit_together(
    open_system: OpenSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .conftest import hook_commits

    async with open_system(Orders, Billing) as system:
        seen: list[tuple[str, str, bool]] = []

        def hook(commits: Any, _: int) -> None:
            for commit in commits:
                stored = commit.update is not None and commit.update.phase == "ready"
                seen.append((commit.binding, commit.instance, stored and bool(commit.writes)))

        hook_commits(monkeypatch, system, hook)
        await system.get(Orders, "o-1").pay(5)
        await system.drain()
        # One commit holds both the target's storage write and the caller's stored result.
        assert ("Billing", "acme", True) in seen


class Purchases(Actor):
    """Schedules several calls to one target in one turn."""

    def buy(self, *amounts: int) -> None:
        c = Continuation(self)
        billing = Continuation(Billing)
        for amount in amounts:
            self.continue_(
                c.bought(c.result), strategy="remote-call", binding="Billing",
                instance="shop", call=billing.charge(amount), timeout=30,
            )  # fmt: skip

    def bought(self, receipt: str) -> None:
        self.storage.put("receipts", [*self.storage.get("receipts", []), receipt])

    def receipts(self) -> list[str]:
        return list(self.storage.get("receipts", []))


def fail_call_turns(monkeypatch: pytest.MonkeyPatch, system: ActorSystem, times: int) -> list[int]:
    """Fail the first ``times`` batches that hold a call's turn on Billing (the target's
    effects with its caller's stored result), as a disk error would; return how many of
    those turns each failed batch held."""
    from .conftest import hook_commits

    failed: list[int] = []

    def hook(commits: Any, _: int) -> None:
        turns = [c for c in commits if c.binding == "Billing" and c.update is not None]
        if turns and len(failed) < times:
            failed.append(len(turns))
            raise OSError("disk I/O error")

    hook_commits(monkeypatch, system, hook)
    return failed


async def test_calls_whose_turns_failed_to_commit_are_sent_again_and_run_once_in_order(
    open_system: OpenSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_system(Purchases, Billing) as system:
        failed = fail_call_turns(monkeypatch, system, times=1)
        await system.get(Purchases, "p").buy(1, 2, 3)
        await system.drain()
        # Every call whose turn was in the failed batch (or ran on its lost effects) went
        # again and ran once, in the order they were scheduled.
        assert len(failed) == 1
        assert await system.get(Billing, "shop").total() == 6
        assert await system.get(Purchases, "p").receipts() == [
            "receipt-1",
            "receipt-2",
            "receipt-3",
        ]
        done = await system.continuations(status="completed")
        assert len(done) == 3


async def test_calls_that_waited_on_a_turn_that_failed_go_again_behind_it_in_order(
    postgres_db: PostgresDatabase, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL (which hosts may share) a call first waits for its actor's last commit.
    # The first call's commit fails while the other two wait for it: they did not run, and
    # go again behind the first, so the three still run in the order they were sent.
    from continuation import _system

    async with ActorSystem(postgres_db.url, actors=[Purchases, Billing], clock=clock) as system:
        store, failed, lost = system._store, [], []
        original_apply, original_failed = store.apply, _system._failed

        async def apply(commits: Any) -> Any:
            if not failed and any(c.binding == "Billing" and c.update for c in commits):
                failed.append(len(commits))
                for _ in range(5):
                    await asyncio.sleep(0)  # the other calls are waiting for this commit
                raise OSError("disk I/O error")
            return await original_apply(commits)

        def failing(error: BaseException) -> asyncio.Future[None]:
            lost.append(error)
            return original_failed(error)

        charged: list[int] = []
        original_charge = Billing.charge

        @functools.wraps(original_charge)
        def charge(self: Billing, amount: int) -> str:
            charged.append(amount)
            return original_charge(self, amount)

        monkeypatch.setattr(store, "apply", apply)
        monkeypatch.setattr(_system, "_failed", failing)
        monkeypatch.setattr(Billing, "charge", charge)
        await system.get(Purchases, "p").buy(1, 2, 3)
        await system.drain()
        assert failed == [1]
        assert len(lost) == 2  # the second and third calls, which had not run
        assert charged == [1, 1, 2, 3]  # the first call's failed turn, then all three in order
        assert await system.get(Billing, "shop").total() == 6
        assert await system.get(Purchases, "p").receipts() == [
            "receipt-1",
            "receipt-2",
            "receipt-3",
        ]
        assert len(await system.continuations(status="completed")) == 3


async def test_a_call_whose_turn_never_commits_gives_up_and_times_out(
    open_system: OpenSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_system(Orders, Billing) as system:
        failed = fail_call_turns(monkeypatch, system, times=100)
        cid = await system.get(Orders, "o-1").pay(4, timeout=30)
        await system.drain()
        assert failed == [1] * 5  # sent five times, then left to its timeout
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.PENDING
        notes = [event.detail for event in info.audit if event.event == "late outcome ignored"]
        assert notes == ["the call's turn could not commit for it"]
        await system.advance(30)
        assert await log_of(system) == [
            ("failed", "TimeoutError", "the remote-call got no outcome within 30.0 s")
        ]
        assert await system.get(Billing, "acme").total() == 0


async def test_a_remote_calls_exception_goes_to_the_error_chain(open_system: OpenSystem) -> None:
    async with open_system(Orders, Billing) as system:
        await system.get(Orders, "o-1").pay(-1)
        await system.drain()
        assert await log_of(system) == [("failed", "ValueError", "cannot charge -1")]
        assert await system.get(Billing, "acme").total() == 0  # the failed turn left nothing


async def test_without_an_error_chain_a_failed_call_is_retried_then_dead(
    open_system: OpenSystem,
) -> None:
    async with open_system(Orders, Billing) as system:
        cid = await system.get(Orders, "o-1").pay(
            -1, errors=False, retry=RetryPolicy(max_attempts=2, base_delay=10, jitter=0)
        )
        await system.drain()
        info = await system.continuation(cid)
        assert (info.status, info.attempts) == (ContinuationStatus.PENDING, 1)
        assert info.last_error == "ValueError: cannot charge -1"
        await system.advance(10)
        await system.drain()
        info = await system.continuation(cid)
        assert (info.status, info.attempts) == (ContinuationStatus.DEAD, 2)
        events = [event.event for event in info.audit]
        assert "dispatched again" in events
        assert events[-1] == "dead"
        assert await log_of(system) == []


async def test_a_timeout_goes_to_the_error_chain_and_a_late_result_is_ignored(
    open_system: OpenSystem,
) -> None:
    gate = GATE["late"] = asyncio.Event()
    async with open_system(Orders, Billing) as system:
        orders = system.get(Orders, "o-1")
        cid = await orders.pay(7, method="slow_charge", instance="late", timeout=5)
        await asyncio.sleep(0)  # the call starts and waits at the gate
        await system.advance(5)
        assert await log_of(system) == [
            ("failed", "TimeoutError", "the remote-call got no outcome within 5.0 s")
        ]
        gate.set()
        await system.drain()
        # The target's turn could not commit for a caller that no longer waits: no charge.
        assert await system.get(Billing, "late").total() == 0
        assert await log_of(system) == [
            ("failed", "TimeoutError", "the remote-call got no outcome within 5.0 s")
        ]
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.COMPLETED
        assert "late outcome ignored" in [event.event for event in info.audit]


async def test_a_remote_call_waiting_at_shutdown_is_sent_again_and_runs_once(
    open_system: OpenSystem,
) -> None:
    GATE["restart"] = asyncio.Event()
    first = open_system(Orders, Billing)
    async with first:
        orders = first.get(Orders, "o-1")
        await orders.pay(9, method="slow_charge", instance="restart", timeout=60)
        await asyncio.sleep(0)
    # Closed with the call still waiting: nothing of it committed. On the next start the
    # outbox sends it again, and this time it can finish.
    GATE["restart"].set()
    async with open_system(Orders, Billing) as second:
        await second.drain()
        assert await log_of(second) == [("charged", "receipt-9")]
        assert await second.get(Billing, "restart").total() == 9


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"binding": "Nobody"}, "Billing, whose binding is 'Billing', but binding='Nobody'"),
        ({"call": "charge"}, "must be a call recorded on Continuation(TargetClass)"),
        ({"timeout": 0}, "timeout: Input should be greater than 0"),
        ({"instance": ""}, "instance: String should have at least 1 character"),
    ],
)
async def test_bad_remote_call_options_fail_in_the_scheduling_turn(
    open_system: OpenSystem, options: dict[str, Any], message: str
) -> None:
    class Caller(Actor):
        def go(self, **options: Any) -> str:
            c = Continuation(self)
            base: dict[str, Any] = {
                "binding": "Billing",
                "instance": "acme",
                "call": Continuation(Billing).charge(1),
            }
            return self.continue_(c.done(c.result), strategy="remote-call", **{**base, **options})

        def done(self, value: Any) -> None: ...

    async with open_system(Caller, Billing) as system:
        with pytest.raises(ContinuationOptionsError) as caught:
            await system.get(Caller, "c").go(**options)
        assert message in str(caught.value)
        assert await system.continuations() == []


class Unregistered(Actor):
    def ping(self) -> None: ...


class Caller(Actor):
    CALLS: ClassVar[dict[str, Any]] = {
        "no argument": lambda: Continuation(Billing).charge(),
        "no such method": lambda: Continuation(Billing).refund(1),
        "unregistered": lambda: Continuation(Unregistered).ping(),
        "async": lambda: Continuation(Billing).slow_charge(1),
        "marker": lambda: Continuation(Billing).charge(Continuation(Billing).result),
    }

    def go(self, kind: str) -> str:
        c = Continuation(self)
        call = self.CALLS[kind]()
        binding = "Unregistered" if kind == "unregistered" else "Billing"
        return self.continue_(
            c.done(c.result), strategy="remote-call", binding=binding, instance="a", call=call
        )

    def done(self, value: Any) -> None: ...


async def test_a_remote_call_is_checked_against_the_target_class(open_system: OpenSystem) -> None:
    async with open_system(Caller, Billing) as system:
        caller = system.get(Caller, "c")
        with pytest.raises(ContinuationChainError, match="missing a required argument"):
            await caller.go("no argument")
        with pytest.raises(ContinuationChainError, match="is not a method of Billing"):
            await caller.go("no such method")
        with pytest.raises(ContinuationChainError, match="is refused"):
            await caller.go("marker")
        with pytest.raises(ContinuationOptionsError, match="no actor class is registered"):
            await caller.go("unregistered")
        # An async target method is fine: it runs in the target's own turn.
        assert await caller.go("async")


# -- signal ----------------------------------------------------------------------------------


async def test_a_signal_delivers_its_payload(open_system: OpenSystem) -> None:
    async with open_system(Orders) as system:
        cid = await system.get(Orders, "o-1").wait("approval")
        await system.drain()
        assert await log_of(system) == []
        await system.signal("Orders", "o-1", "approval", {"by": "ann"})
        await system.drain()
        assert await log_of(system) == [("signal", "approval", {"by": "ann"})]
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.COMPLETED


async def test_a_signal_sent_before_anyone_waits_is_kept_for_the_next_waiter(
    open_system: OpenSystem,
) -> None:
    async with open_system(Orders) as system:
        await system.signal("Orders", "o-1", "approval", 1)
        await system.signal("Orders", "o-1", "approval", 2)
        await system.signal("Orders", "o-1", "other", "x")
        orders = system.get(Orders, "o-1")
        await orders.wait("approval")
        await system.drain()
        assert await log_of(system) == [("signal", "approval", 1)]
        await orders.wait("approval")
        await orders.wait("approval")
        await system.drain()
        assert await log_of(system) == [("signal", "approval", 1), ("signal", "approval", 2)]
        await system.signal("Orders", "o-1", "approval", 3)
        await system.drain()
        assert [entry[2] for entry in await log_of(system)] == [1, 2, 3]


async def test_signals_go_to_waiters_in_order_each_to_exactly_one(
    open_system: OpenSystem,
) -> None:
    async with open_system(Orders) as system:
        orders = system.get(Orders, "o-1")
        first = await orders.wait("approval")
        second = await orders.wait("approval")
        for payload in ("a", "b", "c"):
            await system.signal("Orders", "o-1", "approval", payload)
        await system.drain()
        assert await log_of(system) == [("signal", "approval", "a"), ("signal", "approval", "b")]
        statuses = [(await system.continuation(cid)).status for cid in (first, second)]
        assert statuses == [ContinuationStatus.COMPLETED] * 2
        third = await orders.wait("approval")  # takes the kept "c"
        await system.drain()
        assert (await log_of(system))[-1] == ("signal", "approval", "c")
        assert (await system.continuation(third)).status == ContinuationStatus.COMPLETED


async def test_a_signal_sent_in_a_turn_commits_with_it(open_system: OpenSystem) -> None:
    async with open_system(Orders) as system:
        await system.get(Orders, "o-1").wait("approval")
        approver = system.get(Orders, "boss")
        with pytest.raises(RuntimeError):
            await approver.approve("o-1", "no", fail=True)
        await system.drain()
        assert await log_of(system) == []
        await approver.approve("o-1", "yes")
        await system.drain()
        assert await log_of(system) == [("signal", "approval", "yes")]


async def test_system_signal_inside_an_async_turn_joins_that_turn(
    open_system: OpenSystem,
) -> None:
    async with open_system(Orders) as system:
        await system.get(Orders, "o-1").wait("approval")
        await system.get(Orders, "boss").approve_async(system, "o-1", "ok")
        await system.drain()
        assert await log_of(system) == [("signal", "approval", "ok")]


async def test_a_signal_timeout_delivers_timeout_error(open_system: OpenSystem) -> None:
    async with open_system(Orders) as system:
        cid = await system.get(Orders, "o-1").wait("approval", timeout=60)
        await system.advance(60)
        assert await log_of(system) == [("no signal", "approval", "TimeoutError")]
        # The waiter is gone: a later signal is kept for the next one.
        await system.signal("Orders", "o-1", "approval", "late")
        await system.drain()
        assert len(await log_of(system)) == 1
        assert (await system.continuation(cid)).status == ContinuationStatus.COMPLETED


async def test_bad_signals_are_refused(open_system: OpenSystem) -> None:
    async with open_system(Orders) as system:
        with pytest.raises(UnknownActorError):
            await system.signal("Nobody", "o-1", "approval")
        with pytest.raises(InvalidArgumentError, match="a signal name"):
            await system.signal("Orders", "o-1", "")
        with pytest.raises(ContinuationOptionsError, match="name"):
            await system.get(Orders, "o-1").wait("")


# -- cancellation ----------------------------------------------------------------------------


async def test_cancelling_a_waiting_signal_delivers_continuation_cancelled(
    open_system: OpenSystem,
) -> None:
    async with open_system(Orders) as system:
        orders = system.get(Orders, "o-1")
        cid = await orders.wait("approval")
        await orders.cancel(cid)
        await system.drain()
        assert await log_of(system) == [("no signal", "approval", "ContinuationCancelled")]
        # A cancelled waiter takes no signal.
        await system.signal("Orders", "o-1", "approval", 1)
        await orders.wait("approval")
        await system.drain()
        assert (await log_of(system))[-1] == ("signal", "approval", 1)
        assert (await system.continuation(cid)).status == ContinuationStatus.CANCELLED


async def test_cancelling_a_fetch_aborts_the_request(open_system: OpenSystem) -> None:
    started, aborted = asyncio.Event(), asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            aborted.set()
            raise
        raise AssertionError("unreachable")

    client = httpx.AsyncClient(transport=httpx.MockTransport(hang))
    async with client, open_system(Orders, http_client=client) as system:
        cid = await system.get(Orders, "o-1").fetch("http://api.test/slow")
        await started.wait()
        await system.cancel(cid)
        await system.drain()
        assert aborted.is_set()
        assert await log_of(system) == [("fetch failed", "ContinuationCancelled")]


# -- proxy-fetch -----------------------------------------------------------------------------


async def test_a_fetch_delivers_any_final_response(open_system: OpenSystem) -> None:
    keys: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["idempotency-key"])
        status = 404 if request.url.path == "/missing" else 200
        return httpx.Response(status, text=f"at {request.url.path}")

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    async with client, open_system(Orders, http_client=client) as system:
        orders = system.get(Orders, "o-1")
        first = await orders.fetch("http://api.test/rates")
        second = await orders.fetch("http://api.test/missing")
        await system.drain()
        assert await log_of(system) == [
            ("fetched", 200, "at /rates"),
            ("fetched", 404, "at /missing"),
        ]
        assert keys == [first, second]  # the idempotency key is the continuation id


async def test_a_failed_fetch_goes_to_the_error_chain_or_dead(open_system: OpenSystem) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    quick = RetryPolicy(max_attempts=2, base_delay=0, jitter=0)
    async with client, open_system(Orders, http_client=client) as system:
        orders = system.get(Orders, "o-1")
        await orders.fetch("http://api.test/", retry=quick)
        dead = await orders.fetch("http://api.test/", errors=False, retry=quick)
        await system.drain()
        assert await log_of(system) == [("fetch failed", "FetchError")]
        info = await system.continuation(dead)
        assert info.status == ContinuationStatus.DEAD
        assert info.last_error is not None
        assert info.last_error.startswith("FetchError: fetch of http://api.test/ failed after 2")


async def test_fetch_options_are_validated(open_system: OpenSystem) -> None:
    async with open_system(Orders) as system:
        orders = system.get(Orders, "o-1")
        with pytest.raises(ContinuationOptionsError, match=r"FetchRequest or an httpx\.Request"):
            await orders.fetch_raw("http://x.test/")
        with pytest.raises(ContinuationOptionsError, match="timeout"):
            await orders.fetch_raw(FetchRequest(url="http://x.test/"), timeout=-1)
        # An httpx.Request is converted when continue_ is called.
        assert await orders.fetch_raw(httpx.Request("POST", "http://x.test/", json={"a": 1}))


# -- idempotent calls ------------------------------------------------------------------------


async def test_a_call_with_an_idempotency_key_runs_once(open_system: OpenSystem) -> None:
    from operation_chain import OperationProxy, chain_of

    p = OperationProxy()
    async with open_system(Billing, retention=60) as system:
        charge = chain_of(p.charge(4))
        assert await system.call("Billing", "acme", charge, idempotency_key="k") == "receipt-4"
        assert await system.call("Billing", "acme", charge, idempotency_key="k") == "receipt-4"
        assert await system.get(Billing, "acme").total() == 4
        # The key belongs to one actor, and a call that raised stored nothing.
        assert await system.call("Billing", "other", charge, idempotency_key="k") == "receipt-4"
        refused = chain_of(p.charge(-1))
        for _ in range(2):
            with pytest.raises(ValueError, match="cannot charge -1"):
                await system.call("Billing", "acme", refused, idempotency_key="bad")
        with pytest.raises(TypeError, match="idempotency_key must be a str"):
            await system.call("Billing", "acme", charge, idempotency_key=3)  # type: ignore[arg-type]
        # Keys are forgotten with the retention period.
        await system.advance(61)
        await system.purge()
        await system.call("Billing", "acme", charge, idempotency_key="k")
        assert await system.get(Billing, "acme").total() == 8


# -- retries of strategies -------------------------------------------------------------------


async def test_a_signal_waiter_waiting_again_takes_a_signal_sent_meanwhile(
    open_system: OpenSystem,
) -> None:
    async with open_system(Orders) as system:
        retry = RetryPolicy(max_attempts=3, base_delay=10, jitter=0)
        cid = await system.get(Orders, "o-1").wait("approval", errors=False, timeout=5, retry=retry)
        await system.advance(5)  # timed out: a failed attempt, waiting again in 10 s
        info = await system.continuation(cid)
        assert (info.status, info.attempts) == (ContinuationStatus.PENDING, 1)
        await system.signal("Orders", "o-1", "approval", "meanwhile")  # kept: nobody waits
        await system.advance(10)
        await system.drain()
        assert await log_of(system) == [("signal", "approval", "meanwhile")]
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.COMPLETED
        assert "waiting again" in [event.event for event in info.audit]


async def test_retrying_a_dead_remote_call_sends_it_again(
    open_system: OpenSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_system(Orders, Billing) as system:
        once = RetryPolicy(max_attempts=1)
        cid = await system.get(Orders, "o-1").pay(-3, errors=False, retry=once)
        await system.drain()
        assert (await system.continuation(cid)).status == ContinuationStatus.DEAD
        # The cause is fixed on the target's side: a retry calls it again.
        monkeypatch.setattr(sys.modules[__name__], "ALLOW_NEGATIVE", True)
        await system.retry(cid)
        await system.drain()
        assert await log_of(system) == [("charged", "receipt--3")]
        assert (await system.continuation(cid)).status == ContinuationStatus.COMPLETED


async def test_retrying_a_dead_fetch_sends_the_request_again(open_system: OpenSystem) -> None:
    answers = iter([httpx.Response(503), httpx.Response(200, text="fine")])
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: next(answers)))
    once = RetryPolicy(max_attempts=1)
    async with client, open_system(Orders, http_client=client) as system:
        cid = await system.get(Orders, "o-1").fetch("http://api.test/", errors=False, retry=once)
        await system.drain()
        assert (await system.continuation(cid)).status == ContinuationStatus.DEAD
        await system.retry(cid)
        await system.drain()
        assert await log_of(system) == [("fetched", 200, "fine")]


async def test_retrying_a_handler_that_failed_on_a_result_reuses_the_result(
    open_system: OpenSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_system(Orders, Billing) as system:
        orders = system.get(Orders, "o-1")
        cid = await orders.pay(2, retry=RetryPolicy(max_attempts=1))
        with monkeypatch.context() as patch:
            patch.setattr(sys.modules[__name__], "BROKEN_HANDLER", True)
            await system.drain()
        assert (await system.continuation(cid)).status == ContinuationStatus.DEAD
        await system.retry(cid)
        await system.drain()
        assert await log_of(system) == [("charged", "receipt-2")]
        assert await system.get(Billing, "acme").total() == 2  # charged once, not twice


async def test_actor_signal_checks_where_it_goes(open_system: OpenSystem) -> None:
    class Sender(Actor):
        def send(self, binding: str, instance: str) -> None:
            self.signal(binding, instance, "approval")

    async with open_system(Sender, Orders) as system:
        with pytest.raises(UnknownActorError):
            await system.get(Sender, "s").send("Nobody", "o-1")
        with pytest.raises(InvalidArgumentError, match="instance"):
            await system.get(Sender, "s").send("Orders", "")


async def test_work_beyond_the_running_limit_waits_its_turn(
    open_system: OpenSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    from continuation import _dispatch

    monkeypatch.setattr(_dispatch, "MAX_RUNNING", 2)
    gate = GATE["queue"] = asyncio.Event()
    async with open_system(Orders, Billing) as system:
        orders = system.get(Orders, "o-1")
        cids = [await orders.pay(n, method="slow_charge", instance="queue") for n in (1, 2, 3, 4)]
        await asyncio.sleep(0)
        dispatcher = system._dispatcher
        assert (len(dispatcher._actors), list(dispatcher._queue)) == (2, cids[2:])
        await orders.cancel(cids[3])  # a queued job is dropped, never sent
        assert list(dispatcher._queue) == cids[2:3]
        gate.set()
        await system.drain()
        log = await log_of(system)
        assert log[0][1] == "ContinuationCancelled"  # delivered at once, before the gate opened
        assert [entry[1] for entry in log[1:]] == ["receipt-1", "receipt-2", "receipt-3"]
        assert await system.get(Billing, "queue").total() == 6
