"""The ``Store`` contract, checked on each store directly: what ``apply`` writes and refuses,
and what the reads return in which order. Every test runs on SQLite and on PostgreSQL, so
the two stores are held to the same behaviour."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from continuation._options import RetryPolicy
from continuation._outcomes import after_delivery, completed, delivered, failed
from continuation._store.base import (
    Commit,
    ContinuationRow,
    NewContinuation,
    Refusal,
    RowUpdate,
    SignalSend,
    Store,
)
from continuation._store.postgres import PostgresStore
from continuation._store.select import create_store
from continuation._store.sqlite import SQLiteStore

from .conftest import START, keys_of, state_of

T0 = START.timestamp()


@pytest.fixture
async def store(db_path: str) -> AsyncIterator[Store]:
    store = create_store(db_path, durability="normal")
    await store.open()
    yield store
    await store.close()


def new(
    cid: str, *, due: float | None = T0 + 10, instance: str = "a", **fields: Any
) -> NewContinuation:
    values: dict[str, Any] = {
        "id": cid, "binding": "A", "instance": instance, "strategy": "alarm", "chain": b"chain",
        "error_chain": None, "chain_text": "fire(<result>)", "error_chain_text": None,
        "options": "{}", "retry": None, "due_at": due, "key": None, "cron": None, "version": "1",
    }  # fmt: skip
    values.update(fields)
    return NewContinuation(**values)


def waiter(cid: str, name: str = "go", instance: str = "a") -> NewContinuation:
    return new(cid, due=None, instance=instance, strategy="signal", phase="waiting", wait_name=name)


def change(row: ContinuationRow, **fields: Any) -> RowUpdate:
    values: dict[str, Any] = {
        "id": row.id, "revision": row.revision, "status": row.status, "due_at": row.due_at,
        "scheduled_at": row.scheduled_at, "attempts": row.attempts,
        "last_error": row.last_error, "last_traceback": row.last_traceback,
        "finished_at": row.finished_at, "cancel_requested": row.cancel_requested,
        "events": [], "phase": row.phase, "outcome": row.outcome,
    }  # fmt: skip
    values.update(fields)
    return RowUpdate(**values)


def turn(now: float = T0, instance: str = "a", **effects: Any) -> Commit:
    return Commit("A", instance, now, **effects)


async def row_of(store: Store, cid: str) -> ContinuationRow:
    row = await store.get(cid)
    assert row is not None
    return row


async def all_rows(store: Store, count: int) -> list[ContinuationRow]:
    rows = await store.find(statuses=None, binding=None, instance=None, limit=count + 1)
    assert [row.id for row in rows] == [f"c{n:04}" for n in range(count)]
    return rows


async def events_of(store: Store, cid: str) -> list[tuple[str, str | None]]:
    return [(e.event, e.detail) for e in await store.audit(cid)]


def test_the_store_follows_the_database_argument(tmp_path: Path) -> None:
    assert isinstance(create_store(str(tmp_path / "x.db"), durability="full"), SQLiteStore)
    assert isinstance(create_store(tmp_path / "x.db", durability="full"), SQLiteStore)
    assert isinstance(create_store(":memory:", durability="full"), SQLiteStore)
    for url in ("postgresql://u@h/db", "postgres://u@h/db"):
        assert isinstance(create_store(url, durability="full"), PostgresStore)


# -- writes ----------------------------------------------------------------------------------


async def test_storage_writes_in_one_batch_apply_in_order_the_last_winning(store: Store) -> None:
    await store.apply([turn(writes={"k": b"1", "gone": b"x"})])
    refused = await store.apply(
        [
            turn(writes={"k": b"2", "gone": None}),
            turn(writes={"k": None, "new": b"n"}),
            turn(writes={"k": b"3"}),
            turn(instance="b", writes={"k": b"other"}),
        ]
    )
    assert refused == {}
    assert await state_of(store, "A", "a") == {"k": b"3", "new": b"n"}
    assert await state_of(store, "A", "b") == {"k": b"other"}
    assert await state_of(store, "A", "nobody") == {}


async def test_a_new_continuation_is_stored_pending_with_its_fields(store: Store) -> None:
    await store.apply([turn(new=[new("c1", key="k", error_chain=b"err", retry='{"x":1}')])])
    row = await row_of(store, "c1")
    assert (row.status, row.due_at, row.scheduled_at, row.created_at) == (
        "pending", T0 + 10, T0 + 10, T0,
    )  # fmt: skip
    assert (row.chain, row.error_chain, row.key, row.retry) == (b"chain", b"err", "k", '{"x":1}')
    assert (row.attempts, row.revision, row.cancel_requested) == (0, 0, False)
    assert await keys_of(store, "A", "a") == {"k": "c1"}
    assert await store.get("missing") is None


async def test_an_update_frees_a_key_that_a_new_continuation_takes_in_the_same_batch(
    store: Store,
) -> None:
    await store.apply([turn(new=[new("c1", key="k")])])
    row = await row_of(store, "c1")
    done = change(row, status="completed", due_at=None, finished_at=T0 + 1, attempts=1)
    assert await store.apply([turn(T0 + 1, update=done, new=[new("c2", key="k")])]) == {}
    assert (await row_of(store, "c1")).status == "completed"
    assert (await row_of(store, "c1")).revision == 1
    assert await keys_of(store, "A", "a") == {"k": "c2"}


async def test_load_actor_reads_one_actors_state_and_pending_keys_together(store: Store) -> None:
    # A key of the state and a dedup key may share a name; neither hides the other.
    await store.apply(
        [
            turn(writes={"k": b"v", "blob": bytes(range(256))},
                 new=[new("c1", key="k"), new("c2", key="done"), new("c3")]),
            turn(instance="b", writes={"k": b"other"}, new=[new("b1", instance="b", key="k")]),
        ]
    )  # fmt: skip
    c2 = await row_of(store, "c2")
    finished = change(c2, status="completed", due_at=None, finished_at=T0 + 1)
    assert await store.apply([turn(T0 + 1, update=finished)]) == {}
    state, keys = await store.load_actor("A", "a")
    assert state == {"k": b"v", "blob": bytes(range(256))}
    assert keys == {"k": "c1"}
    assert await store.load_actor("A", "b") == ({"k": b"other"}, {"k": "b1"})
    assert await store.load_actor("A", "nobody") == ({}, {})


async def test_a_call_result_is_stored_and_the_last_one_of_a_key_wins(store: Store) -> None:
    await store.apply([turn(call_result=("key", b"first"))])
    await store.apply(
        [turn(call_result=("key", b"second")), turn(T0 + 1, call_result=("key", b"third"))]
    )
    assert await store.call_result("A", "a", "key") == b"third"
    assert await store.call_result("A", "b", "key") is None


async def test_notes_and_update_events_go_to_the_audit_trail_in_order(store: Store) -> None:
    await store.apply([turn(new=[new("c1")], notes=[("c1", "scheduled", None)])])
    row = await row_of(store, "c1")
    failed = change(row, attempts=1, events=[("attempt failed", "boom"), ("retrying", None)])
    await store.apply([turn(T0 + 1, update=failed, notes=[("c1", "note", "after")])])
    assert await events_of(store, "c1") == [
        ("scheduled", None), ("attempt failed", "boom"), ("retrying", None), ("note", "after"),
    ]  # fmt: skip
    assert [e.at for e in await store.audit("c1")] == [T0, T0 + 1, T0 + 1, T0 + 1]


async def test_a_cancel_ends_a_plain_continuation_and_flags_one_with_an_error_chain(
    store: Store,
) -> None:
    await store.apply([turn(new=[new("plain"), new("guarded", error_chain=b"err")])])
    await store.apply([turn(T0 + 1, cancels=["plain", "guarded"])])
    plain, guarded = await row_of(store, "plain"), await row_of(store, "guarded")
    assert (plain.status, plain.due_at, plain.finished_at) == ("cancelled", None, T0 + 1)
    assert (guarded.status, guarded.cancel_requested, guarded.due_at) == ("pending", True, T0 + 1)
    assert await events_of(store, "plain") == [("cancelled", None)]
    assert await events_of(store, "guarded") == [("cancel requested", None)]
    # Asked again: nothing more happens to either.
    await store.apply([turn(T0 + 2, cancels=["plain", "guarded"])])
    assert await events_of(store, "guarded") == [("cancel requested", None)]
    assert (await row_of(store, "guarded")).revision == 1


async def test_a_cancel_reaches_a_continuation_of_the_same_batch_and_only_its_own_actor(
    store: Store,
) -> None:
    await store.apply([turn(instance="b", new=[new("theirs", instance="b")])])
    await store.apply([turn(new=[new("mine")], cancels=["mine", "theirs"])])
    assert (await row_of(store, "mine")).status == "cancelled"
    assert (await row_of(store, "theirs")).status == "pending"


# -- signals ---------------------------------------------------------------------------------


async def test_a_signal_goes_to_the_oldest_waiter_and_is_kept_when_none_waits(
    store: Store,
) -> None:
    await store.apply([turn(new=[waiter("w2"), waiter("w1"), waiter("other", name="stop")])])
    go = SignalSend("A", "a", "go", b"one")
    await store.apply([turn(T0 + 1, signals=[go, replace(go, payload=b"two")])])
    await store.apply([turn(T0 + 2, signals=[replace(go, payload=b"three")])])
    w1, w2 = await row_of(store, "w1"), await row_of(store, "w2")
    assert (w1.phase, w1.outcome, w1.due_at, w1.revision) == ("ready", b"one", T0 + 1, 1)
    assert (w2.phase, w2.outcome, w2.due_at) == ("ready", b"two", T0 + 1)
    assert await events_of(store, "w1") == [("signal received", "'go'")]
    assert (await row_of(store, "other")).phase == "waiting"
    # Nobody waits any more: the third waits for the next waiter, which takes it at once.
    await store.apply([turn(T0 + 3, new=[waiter("w3")])])
    w3 = await row_of(store, "w3")
    assert (w3.phase, w3.outcome, w3.due_at) == ("ready", b"three", T0 + 3)
    assert await events_of(store, "w3") == [("signal received", "'go', sent before the wait began")]


async def test_buffered_signals_are_taken_oldest_first_by_waiters_in_turn_order(
    store: Store,
) -> None:
    sends = [SignalSend("A", "a", "go", bytes([n])) for n in range(3)]
    await store.apply([turn(signals=sends[:2]), turn(signals=sends[2:])])
    await store.apply([turn(T0 + 1, new=[waiter("x2"), waiter("x1")])])
    assert (await row_of(store, "x2")).outcome == b"\x00"
    assert (await row_of(store, "x1")).outcome == b"\x01"
    await store.apply([turn(T0 + 2, new=[waiter("x3")])])
    assert (await row_of(store, "x3")).outcome == b"\x02"
    await store.apply([turn(T0 + 3, new=[waiter("x4")])])
    assert (await row_of(store, "x4")).phase == "waiting"


async def test_a_signal_sent_with_its_waiter_in_one_batch_reaches_it(store: Store) -> None:
    signal = SignalSend("A", "a", "go", b"p")
    await store.apply([turn(new=[waiter("w")]), turn(instance="b", signals=[signal])])
    assert (await row_of(store, "w")).outcome == b"p"


async def test_a_cancelled_or_other_actors_waiter_does_not_receive_a_signal(store: Store) -> None:
    await store.apply(
        [
            turn(new=[waiter("flagged")]),
            turn(instance="b", new=[waiter("elsewhere", instance="b")]),
        ]
    )
    flagged = await row_of(store, "flagged")
    await store.apply([turn(update=change(flagged, cancel_requested=True))])
    await store.apply([turn(signals=[SignalSend("A", "a", "go", b"p")])])
    assert (await row_of(store, "flagged")).outcome is None
    assert (await row_of(store, "elsewhere")).outcome is None
    await store.apply([turn(new=[waiter("late")])])
    assert (await row_of(store, "late")).outcome == b"p"


async def test_a_waiter_waiting_again_takes_a_signal_that_came_in_between(store: Store) -> None:
    await store.apply([turn(new=[waiter("w")])])
    w = await row_of(store, "w")
    timed_out = change(w, phase="retry", due_at=T0 + 5)
    await store.apply([turn(T0 + 1, update=timed_out)])
    await store.apply([turn(T0 + 2, signals=[SignalSend("A", "a", "go", b"late")])])
    assert (await row_of(store, "w")).outcome is None
    w = await row_of(store, "w")
    await store.apply([turn(T0 + 3, update=change(w, phase="waiting", due_at=T0 + 60))])
    w = await row_of(store, "w")
    assert (w.phase, w.outcome, w.due_at) == ("ready", b"late", T0 + 3)


# -- the fence -------------------------------------------------------------------------------


async def test_a_turn_whose_continuation_changed_is_refused_with_the_later_turns_of_its_actor(
    store: Store,
) -> None:
    await store.apply([turn(new=[new("c1"), new("c2")]), turn(instance="b", new=[new("b1")])])
    c1, c2 = await row_of(store, "c1"), await row_of(store, "c2")
    stale = change(c1, status="completed", revision=c1.revision - 1)
    refused = await store.apply(
        [
            turn(update=stale, writes={"k": b"1"}),
            turn(writes={"k": b"2"}),
            turn(instance="b", writes={"k": b"b"}),
            turn(update=change(c2, attempts=5)),
        ]
    )
    assert refused == {0: Refusal.CHANGED, 1: Refusal.CHANGED, 3: Refusal.CHANGED}
    assert await state_of(store, "A", "a") == {}
    assert await state_of(store, "A", "b") == {"k": b"b"}
    assert (await row_of(store, "c2")).attempts == 0


async def test_a_refused_standalone_turn_does_not_refuse_later_turns(store: Store) -> None:
    await store.apply([turn(new=[new("c1")])])
    c1 = await row_of(store, "c1")
    gone = change(c1, revision=7, phase="ready")
    refused = await store.apply([turn(update=gone, standalone=True), turn(writes={"k": b"1"})])
    assert refused == {0: Refusal.CHANGED}
    assert await state_of(store, "A", "a") == {"k": b"1"}


async def test_a_stale_update_among_many_of_the_same_kind_is_refused_alone(store: Store) -> None:
    # Updates of the same columns go to the store together; a store may write them first
    # and check afterwards, so the one stale update must still take nothing else with it.
    await store.apply([turn(instance=f"i{n}", new=[new(f"c{n:04}", instance=f"i{n}")])
                       for n in range(40)])  # fmt: skip
    rows = await all_rows(store, 40)
    updates = [completed(row, T0 + 1) for row in rows]
    updates[17] = replace(updates[17], revision=updates[17].revision + 1)
    commits = [turn(T0 + 1, instance=f"i{n}", update=u, writes={"k": b"v"})
               for n, u in enumerate(updates)]  # fmt: skip
    assert await store.apply(commits) == {17: Refusal.CHANGED}
    for n, row in enumerate(await all_rows(store, 40)):
        expected = ("pending", 0, {}) if n == 17 else ("completed", 1, {"k": b"v"})
        assert (row.status, row.revision, await state_of(store, "A", f"i{n}")) == expected


async def test_an_update_of_a_row_that_is_gone_is_refused(store: Store) -> None:
    await store.apply([turn(new=[new("c1")])])
    ghost = change(await row_of(store, "c1"), id="ghost")
    assert await store.apply([turn(update=ghost)]) == {0: Refusal.CHANGED}


async def test_a_batch_of_over_a_thousand_turns_writes_every_row_exactly(store: Store) -> None:
    # Batches are written as many-row statements in chunks of up to 1,024 rows: sizes past
    # the largest chunk and around the smaller ones' edges, blobs that are not text and
    # floats with every bit used must all come back unchanged.
    count = 1_100
    dues = [T0 + n / 7 for n in range(count)]
    await store.apply(
        [
            turn(
                instance=f"i{n}",
                writes={f"k{n}": bytes([n % 256, 0, 255])},
                new=[
                    new(
                        f"c{n:04}",
                        due=dues[n],
                        instance=f"i{n}",
                        chain=b"\xff\x00" + bytes([n % 256]),
                    )
                ],
            )
            for n in range(count)
        ]
    )
    rows = await all_rows(store, count)
    assert [row.due_at for row in rows] == dues
    assert [row.chain for row in rows] == [b"\xff\x00" + bytes([n % 256]) for n in range(count)]
    stale = change(rows[150], status="completed", revision=rows[150].revision + 1)
    updates = [
        turn(
            T0 + 1,
            instance=f"i{n}",
            update=stale
            if n == 150
            else change(
                rows[n], status="completed", due_at=None, finished_at=T0 + 1 + n / 3, attempts=1
            ),
            writes={f"k{n}": None} if n % 2 else {f"k{n}": b"again"},
        )
        for n in range(count)
    ]
    assert await store.apply(updates) == {150: Refusal.CHANGED}
    for n, row in enumerate(await all_rows(store, count)):
        if n == 150:
            assert (row.status, row.revision) == ("pending", 0)
            assert await state_of(store, "A", f"i{n}") == {f"k{n}": bytes([n % 256, 0, 255])}
            continue
        assert (row.status, row.finished_at, row.attempts, row.revision) == (
            "completed", T0 + 1 + n / 3, 1, 1,
        )  # fmt: skip
        expected = {} if n % 2 else {f"k{n}": b"again"}
        assert await state_of(store, "A", f"i{n}") == expected


async def test_updates_of_one_row_that_follow_each_other_in_a_batch_apply_in_order(
    store: Store,
) -> None:
    # A remote call's delivered outcome, then the handler's completion computed from the
    # revision the delivery makes, in one batch: both apply, in order.
    await store.apply([turn(new=[new("c1", strategy="remote-call", phase="waiting", work=b"w")])])
    row = await row_of(store, "c1")
    ready = delivered(row, T0 + 1, b'["ok",2]', "remote-call result received")
    after = replace(row, revision=row.revision + 1, phase="ready", outcome=ready.outcome,
                    due_at=ready.due_at)  # fmt: skip
    done = completed(after, T0 + 1)
    commits = [turn(T0 + 1, instance="b", update=ready, standalone=True),
               turn(T0 + 1, update=done, writes={"k": b"v"})]  # fmt: skip
    assert await store.apply(commits) == {}
    row = await row_of(store, "c1")
    assert (row.status, row.phase, row.outcome, row.attempts, row.revision) == (
        "completed", "ready", b'["ok",2]', 1, 2,
    )  # fmt: skip
    assert await events_of(store, "c1") == [("remote-call result received", None)]
    assert await state_of(store, "A", "a") == {"k": b"v"}


async def test_an_update_behind_a_refused_one_of_its_row_is_refused_too(store: Store) -> None:
    # The handler's commit rests on the delivery before it: without that, it must not
    # apply, even though the revision it expects is the row's next.
    await store.apply([turn(new=[new("c1", strategy="remote-call", phase="waiting", work=b"w")])])
    row = await row_of(store, "c1")
    stale = replace(delivered(row, T0 + 1, b'["ok",2]', "late"), revision=row.revision - 1)
    after = replace(row, revision=row.revision + 1, phase="ready", outcome=stale.outcome)
    commits = [turn(T0 + 1, instance="b", update=stale, standalone=True),
               turn(T0 + 1, update=completed(after, T0 + 1), writes={"k": b"v"})]  # fmt: skip
    assert await store.apply(commits) == {0: Refusal.CHANGED, 1: Refusal.CHANGED}
    assert (await row_of(store, "c1")).revision == 0
    assert await state_of(store, "A", "a") == {}


async def test_a_turn_resting_on_a_refused_one_is_refused_though_its_revision_matches(
    store: Store,
) -> None:
    # Another change moved the row to the revision the handler's update expects, so only
    # the delivery it rests on (refused) tells that the handler's outcome never arrived.
    await store.apply([turn(new=[new("c1", strategy="remote-call", phase="waiting", work=b"w")])])
    row = await row_of(store, "c1")
    other = change(row, attempts=3)
    late = delivered(row, T0 + 1, b'["ok",2]', "remote-call result received")
    handler = turn(T0 + 1, update=completed(after_delivery(row, late), T0 + 1),
                   writes={"k": b"v"}, rests_on=1)  # fmt: skip
    commits = [turn(instance="x", update=other, standalone=True),
               turn(instance="b", update=late, standalone=True), handler]  # fmt: skip
    assert await store.apply(commits) == {1: Refusal.CHANGED, 2: Refusal.CHANGED}
    row = await row_of(store, "c1")
    assert (row.status, row.phase, row.attempts, row.revision) == ("pending", "waiting", 3, 1)
    assert await state_of(store, "A", "a") == {}


async def test_two_updates_of_one_row_from_the_same_revision_commit_only_the_first(
    store: Store,
) -> None:
    # A firing and a cancellation computed from one read: the second would overwrite the
    # first without seeing it.
    await store.apply([turn(new=[new("c1")])])
    row = await row_of(store, "c1")
    first = change(row, attempts=1, last_error="first")
    second = change(row, attempts=2, last_error="second")
    refused = await store.apply([turn(update=first), turn(update=second, standalone=True)])
    assert refused == {1: Refusal.CHANGED}
    row = await row_of(store, "c1")
    assert (row.attempts, row.last_error, row.revision) == (1, "first", 1)


async def test_narrow_and_full_updates_in_one_batch_leave_each_row_as_its_update_says(
    store: Store,
) -> None:
    # A delivered outcome and a plain completion name the few columns they change, which a
    # store may write alone; a failure changes any. Mixed in one batch, every column of
    # every row must come back as its update holds it.
    await store.apply([turn(new=[new(f"c{n:04}", strategy="remote-call", phase="waiting",
                                     work=b"w") for n in range(9)])])  # fmt: skip
    rows = await all_rows(store, 9)
    ready = [delivered(rows[n], T0 + 1, b'["ok",2]', "remote-call answered") for n in (0, 3, 6)]
    done = [completed(rows[n], T0 + 2) for n in (1, 4, 7)]
    retry = RetryPolicy(max_attempts=3, base_delay=1, jitter=0)
    broke = [failed(rows[n], T0 + 3, ValueError("no"), retry) for n in (2, 5, 8)]
    updates = sorted(ready + done + broke, key=lambda u: u.id)
    assert ready[0].columns is not None
    assert done[0].columns is not None
    assert broke[0].columns is None
    assert await store.apply([turn(T0 + 4, update=u) for u in updates]) == {}
    for update, row in zip(updates, await all_rows(store, 9), strict=True):
        assert (row.status, row.due_at, row.scheduled_at, row.attempts, row.last_error,
                row.last_traceback, row.finished_at, row.cancel_requested, row.phase,
                row.outcome, row.revision, row.updated_at) == (
            update.status, update.due_at, update.scheduled_at, update.attempts,
            update.last_error, update.last_traceback, update.finished_at,
            update.cancel_requested, update.phase, update.outcome, 1, T0 + 4,
        )  # fmt: skip
        assert (row.chain, row.work, row.strategy) == (b"chain", b"w", "remote-call")


# -- reads -----------------------------------------------------------------------------------


async def test_fetch_due_returns_due_rows_earliest_first_ties_by_id_past_the_skipped(
    store: Store,
) -> None:
    await store.apply(
        [turn(new=[new("b", due=T0), new("a", due=T0), new("c", due=T0 - 5), new("z", due=T0 + 1),
                   waiter("never")])]
    )  # fmt: skip
    assert [r.id for r in await store.fetch_due(T0, 10)] == ["c", "a", "b"]
    assert [r.id for r in await store.fetch_due(T0, 2)] == ["c", "a"]
    assert [r.id for r in await store.fetch_due(T0, 2, skip={"c", "x"})] == ["a", "b"]
    assert [r.id for r in await store.fetch_due(T0, 5, skip={"a", "b", "c"})] == []
    assert [r.id for r in await store.fetch_due(T0 + 1, 5)] == ["c", "a", "b", "z"]
    row = (await store.fetch_due(T0, 1))[0]
    assert (row.chain, row.cancel_requested, row.work) == (b"chain", False, None)


async def test_next_due_looks_past_the_skipped_and_the_waiters_without_a_deadline(
    store: Store,
) -> None:
    assert await store.next_due() is None
    await store.apply([turn(new=[waiter("w"), new("b", due=T0 + 2), new("a", due=T0 + 3)])])
    assert await store.next_due() == T0 + 2
    assert await store.next_due(skip={"b"}) == T0 + 3
    assert await store.next_due(skip={"a", "b"}) is None


async def test_waiting_returns_the_work_out_for_the_strategies_asked_in_id_order(
    store: Store,
) -> None:
    await store.apply(
        [turn(new=[waiter("s2"), new("f1", strategy="proxy-fetch", phase="waiting", work=b"w"),
                   waiter("s1"), new("alarm")])]
    )  # fmt: skip
    assert [r.id for r in await store.waiting(["signal"])] == ["s1", "s2"]
    both = await store.waiting(["signal", "proxy-fetch"])
    assert [(r.id, r.work) for r in both] == [("f1", b"w"), ("s1", None), ("s2", None)]


async def test_find_filters_and_orders_by_creation(store: Store) -> None:
    await store.apply([turn(T0 + 1, new=[new("late")])])
    await store.apply(
        [turn(new=[new("b1"), new("a1")]), turn(instance="b", new=[new("x", instance="b")])]
    )
    await store.apply([turn(T0 + 2, cancels=["b1"])])

    async def ids(**filters: Any) -> list[str]:
        options = {"statuses": None, "binding": None, "instance": None, "limit": 100}
        return [r.id for r in await store.find(**{**options, **filters})]

    assert await ids() == ["a1", "b1", "x", "late"]
    assert await ids(limit=2) == ["a1", "b1"]
    assert await ids(statuses=["cancelled"]) == ["b1"]
    assert await ids(statuses=["pending", "cancelled"], instance="a") == ["a1", "b1", "late"]
    assert await ids(statuses=[]) == []
    assert await ids(binding="A", instance="b") == ["x"]
    assert await ids(binding="B") == []


async def test_purge_deletes_old_final_rows_their_audit_and_old_call_results(
    store: Store,
) -> None:
    await store.apply([turn(new=[new("old"), new("recent"), new("kept")], call_result=("k", b"r"))])
    await store.apply([turn(T0 + 1, cancels=["old"], notes=[("old", "x", None)])])
    await store.apply([turn(T0 + 5, cancels=["recent"], call_result=("k2", b"r2"))])
    assert await store.purge(finished_before=T0 + 2, statuses=["completed", "cancelled"]) == 1
    assert await store.get("old") is None
    assert await store.audit("old") == []
    left = await store.find(statuses=None, binding=None, instance=None, limit=9)
    assert [r.id for r in left] == ["kept", "recent"]
    assert await store.call_result("A", "a", "k") is None
    assert await store.call_result("A", "a", "k2") == b"r2"
    assert await store.purge(finished_before=T0 + 2, statuses=["completed", "cancelled"]) == 0
