"""Delivery: due waits are POSTed, signed, to their callbacks; failures are retried with capped
backoff until the give-up age; a recorded success is never delivered again, even after a
restart; pending waits survive one. The clock is manual: ``drain`` delivers what is due."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from continuation import ManualClock, SchemaVersionError, StoreError
from continuation.bouncer import Bouncer, WaitRequest, callback_body, sign

from .conftest import CALLBACK, KEY, RETRY, START, Receiver, Served


async def test_a_wait_is_delivered_when_due_and_not_before(
    served: Served, receiver: Receiver
) -> None:
    wait = await served.register(delay=120, payload=["step", 3])
    await served.advance(119)
    assert receiver.calls == []
    await served.advance(1)
    (call,) = receiver.calls
    assert call.body == {"id": wait["id"], "due_at": START + 120, "payload": ["step", 3]}
    assert call.timestamp == str(int(START + 120))
    assert call.attempt == "1"
    state = await served.state(wait["id"])
    assert state["status"] == "delivered"
    assert state["attempts"] == 1
    assert state["finished_at"] == START + 120
    assert state["next_attempt_at"] is None


async def test_the_signature_covers_timestamp_and_exact_body(
    served: Served, receiver: Receiver
) -> None:
    await served.register(payload={"z": 1, "a": 2})
    await served.advance(60)
    (call,) = receiver.calls
    wait = await served.bouncer.get(call.body["id"])
    assert call.signature == sign(KEY, call.timestamp, callback_body(wait))


async def test_a_delivered_wait_is_never_delivered_again(
    served: Served, receiver: Receiver
) -> None:
    await served.register()
    for _ in range(3):
        await served.advance(3600)
    assert len(receiver.calls) == 1


async def test_a_refused_callback_is_retried_with_capped_backoff_and_jitter(
    served: Served, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503, 404, 302, 500]
    wait = await served.register(payload="p")
    await served.advance(60)
    expected = random.Random(7)
    for attempt in range(1, 6):
        state = await served.state(wait["id"])
        assert state["status"] == "pending"
        assert state["attempts"] == attempt
        assert state["last_error"].startswith("HTTP ")
        assert "nope" in state["last_error"]
        delay = state["next_attempt_at"] - served.clock.now()
        assert delay == pytest.approx(RETRY.delay(attempt, expected))
        assert delay <= RETRY.max_delay
        await served.advance(delay - 0.001)
        assert len(receiver.calls) == attempt, "retried before its backoff was over"
        await served.advance(0.001)
    assert [call.attempt for call in receiver.calls] == ["1", "2", "3", "4", "5", "6"]
    assert len({call.timestamp for call in receiver.calls}) == 6, "each attempt is signed anew"
    state = await served.state(wait["id"])
    assert (state["status"], state["attempts"], state["last_error"]) == ("delivered", 6, None)


async def test_an_unreachable_callback_is_retried_with_the_error_recorded(
    open_bouncer: Callable[..., Any], receiver: Receiver
) -> None:
    attempts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(204)

    async with open_bouncer(transport=httpx.MockTransport(handler)) as served:
        wait = await served.register()
        await served.advance(60)
        state = await served.state(wait["id"])
        assert state["last_error"] == "ConnectError: connection refused"
        await served.advance(RETRY.max_delay)
        assert (await served.state(wait["id"]))["status"] == "delivered"


async def test_a_wait_failing_past_the_give_up_age_is_failed_and_kept(
    open_bouncer: Callable[..., Any], receiver: Receiver
) -> None:
    receiver.statuses = [500] * 100
    async with open_bouncer(give_up_after=300) as served:
        wait = await served.register()
        await served.advance(60)
        while (await served.state(wait["id"]))["status"] == "pending":
            await served.advance(RETRY.max_delay)
        state = await served.state(wait["id"])
        assert state["status"] == "failed"
        assert state["last_error"] == "HTTP 500: nope"
        assert state["finished_at"] - state["due_at"] >= 300
        calls = len(receiver.calls)
        assert 4 <= calls <= 300 / (RETRY.max_delay * (1 - RETRY.jitter)) + 4
        await served.advance(86_400)
        assert len(receiver.calls) == calls, "a failed wait was retried"


async def test_the_connection_stays_open_while_the_receiver_works(
    served: Served, receiver: Receiver
) -> None:
    receiver.hold = asyncio.Event()
    wait = await served.register()
    served.clock.set(START + 60)
    await served.bouncer.deliver_due()
    while not receiver.calls:
        await asyncio.sleep(0)
    assert served.bouncer.in_flight == {wait["id"]}
    assert await served.bouncer.deliver_due() == 0, "a wait in flight was started twice"
    response = await served.client.delete(f"/waits/{wait['id']}")
    assert response.status_code == 409
    assert "being delivered" in response.json()["message"]
    served.clock.set(START + 500)  # the receiver works for a long time
    receiver.hold.set()
    await served.bouncer.drain()
    state = await served.state(wait["id"])
    assert (state["status"], state["finished_at"]) == ("delivered", START + 500)


async def test_many_due_waits_go_out_in_batches_with_bounded_concurrency(
    open_bouncer: Callable[..., Any], receiver: Receiver
) -> None:
    async with open_bouncer(max_concurrent=20) as served:
        ids = set()
        for i in range(150):
            ids.add((await served.register(delay=60 + i % 7, payload=i))["id"])
        await served.advance(600)
    assert sorted(receiver.ids()) == sorted(ids)
    assert receiver.most_active <= 20


async def test_a_restart_delivers_what_was_pending_and_nothing_already_delivered(
    open_bouncer: Callable[..., Any], receiver: Receiver, clock: ManualClock
) -> None:
    async with open_bouncer() as served:
        early = await served.register(delay=60)
        late = await served.register(delay=3600)
        await served.advance(60)
    assert receiver.ids() == [early["id"]]
    clock.set(START + 7200)  # down for two hours: the late wait is overdue
    async with open_bouncer() as served:
        await served.bouncer.drain()
        assert receiver.ids() == [early["id"], late["id"]]
        assert (await served.state(late["id"]))["status"] == "delivered"


async def test_a_cancel_racing_a_read_of_due_waits_is_not_delivered(
    served: Served, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    wait = await served.register()
    served.clock.set(START + 60)
    store = served.bouncer.store
    fetch = store.fetch_due

    async def slow_fetch(*args: Any, **kwargs: Any) -> Any:
        rows = await fetch(*args, **kwargs)
        await served.bouncer.cancel(wait["id"])  # commits while the batch is being read
        return rows

    monkeypatch.setattr(store, "fetch_due", slow_fetch)
    assert await served.bouncer.deliver_due() == 0
    monkeypatch.undo()
    await served.bouncer.drain()
    assert receiver.calls == []


async def test_an_outcome_that_cannot_be_recorded_is_retried_not_delivered_again(
    served: Served, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    wait = await served.register()
    record = served.bouncer.store.record
    failures = 0

    async def flaky(outcome: Any) -> None:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise StoreError("disk full")
        await record(outcome)

    monkeypatch.setattr(served.bouncer.store, "record", flaky)
    await served.advance(60)
    assert failures == 2
    assert (await served.state(wait["id"]))["status"] == "delivered"
    assert len(receiver.calls) == 1


async def test_the_real_clock_loop_delivers_on_time_and_wakes_for_an_earlier_wait(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.clock = time.time
    bouncer = Bouncer(
        tmp_path / "loop.db",
        signing_key=KEY,
        min_delay=0,
        transport=httpx.ASGITransport(app=receiver.app),
    )
    async with bouncer:
        await bouncer.register(WaitRequest(delay=3000, callback=CALLBACK))
        await asyncio.sleep(0.05)  # the loop now sleeps towards the far wait
        soon, _ = await bouncer.register(WaitRequest(delay=0.05, callback=CALLBACK))
        deadline = time.monotonic() + 5
        while not receiver.calls and time.monotonic() < deadline:  # a real-clock loop
            await asyncio.sleep(0.01)
        assert receiver.ids() == [soon.id]
        lateness = float(receiver.calls[0].timestamp) - soon.due_at
        assert lateness < 1.5


async def test_the_loop_survives_a_failing_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bouncer = Bouncer(tmp_path / "loop.db", signing_key=KEY)
    calls = 0
    failed = asyncio.Event()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        failed.set()
        raise StoreError("disk on fire")

    async with bouncer:
        monkeypatch.setattr(bouncer.store, "fetch_due", broken)
        bouncer._wake.set()
        await asyncio.wait_for(failed.wait(), 5)
        await asyncio.sleep(0)
    assert "the delivery loop failed" in caplog.text


async def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (99)")
    db.close()
    with pytest.raises(SchemaVersionError, match="schema version 99"):
        await Bouncer(path, signing_key=KEY).start()


async def test_an_unopenable_database_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open the bouncer database"):
        await Bouncer(tmp_path, signing_key=KEY).start()


async def test_a_write_failing_alone_does_not_fail_the_others(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = served.bouncer.store

    async def bad(db: Any) -> None:
        await db.execute("INSERT INTO no_such_table VALUES (1)")

    good = served.register()
    failing = store._write(bad)
    results = await asyncio.gather(good, failing, return_exceptions=True)
    assert isinstance(results[0], dict)
    assert isinstance(results[1], StoreError)
    assert "no such table" in str(results[1])


async def test_reads_and_writes_after_close_are_store_errors(served: Served) -> None:
    store = served.bouncer.store
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.cancel("x", 0)
    with pytest.raises(StoreError, match="not open"):
        await store.get("x")
    await store.close()


async def test_an_in_memory_store_serves_reads_on_its_one_connection(
    open_bouncer: Callable[..., Any], receiver: Receiver
) -> None:
    async with open_bouncer(database=":memory:") as served:
        wait = await served.register()
        assert (await served.state(wait["id"]))["status"] == "pending"
        assert await served.bouncer.store.counts() == {"pending": 1}
        assert "memory" in repr(served.bouncer.store)


async def test_no_more_than_max_concurrent_deliveries_start(
    open_bouncer: Callable[..., Any], receiver: Receiver
) -> None:
    receiver.hold = asyncio.Event()
    async with open_bouncer(max_concurrent=1) as served:
        await served.register()
        await served.register()
        served.clock.set(START + 60)
        assert await served.bouncer.deliver_due() == 1
        assert await served.bouncer.deliver_due() == 0
        receiver.hold.set()
        await served.bouncer.drain()
    assert len(receiver.calls) == 2


async def test_the_real_clock_loop_waits_for_room_when_every_slot_is_busy(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.clock = time.time
    receiver.hold = asyncio.Event()
    bouncer = Bouncer(
        tmp_path / "loop.db",
        signing_key=KEY,
        min_delay=0,
        max_concurrent=1,
        transport=httpx.ASGITransport(app=receiver.app),
    )
    async with bouncer:
        for _ in range(2):
            await bouncer.register(WaitRequest(delay=0, callback=CALLBACK))
        deadline = time.monotonic() + 5
        while not receiver.calls and time.monotonic() < deadline:  # a real-clock loop
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert len(receiver.calls) == 1, "a second delivery started with no room for it"
        receiver.hold.set()
        while len(receiver.calls) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    assert len(receiver.calls) == 2


async def test_a_failing_read_is_a_store_error(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = served.bouncer.store._reader
    assert reader is not None

    async def broken(*args: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(reader, "execute_fetchall", broken)
    with pytest.raises(StoreError, match="disk I/O error"):
        await served.bouncer.store.get("x")
