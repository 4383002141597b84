"""What only the PostgreSQL store does, and the PostgreSQL twins of the SQLite-file tests in
``test_store.py``: opening (schema versions, migration, bad URLs), the lease fence, the
``continuation_due`` notification, and a firing changed behind the system's back."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from continuation import (
    ActorSystem,
    Continuation,
    ContinuationStatus,
    ManualClock,
    SchemaVersionError,
    StoreError,
)
from continuation._store.base import Commit, Lease, Refusal, SignalSend
from continuation._store.postgres import PostgresStore, _fence, redact
from continuation._store.postgres_migrations import LATEST_VERSION, MIGRATIONS
from continuation._store.postgres_write import write
from operation_chain import Codec, chain_of
from rpc._host import DownstreamMessage
from tests.postgres import PostgresDatabase, with_search_path

from .conftest import hook_commits, state_of
from .test_store import Notifier
from .test_store_contract import change, new, row_of, turn, waiter


@pytest.fixture
async def store(postgres_db: PostgresDatabase) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(postgres_db.url, durability="normal")
    await store.open()
    yield store
    await store.close()


def open_system(database: PostgresDatabase, clock: ManualClock) -> ActorSystem:
    return ActorSystem(database.url, actors=[Notifier], clock=clock)


def versions(database: PostgresDatabase) -> list[int]:
    return [row[0] for row in database.fetch("SELECT version FROM schema_version ORDER BY 1")]


# -- opening ---------------------------------------------------------------------------------


async def test_a_new_database_gets_every_version_and_reopening_migrates_nothing(
    postgres_db: PostgresDatabase, clock: ManualClock
) -> None:
    for _ in range(2):
        async with open_system(postgres_db, clock):
            pass
    assert versions(postgres_db) == list(range(1, LATEST_VERSION + 1))
    tables = {row[0] for row in postgres_db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    )}  # fmt: skip
    assert tables == {
        "schema_version", "actor_state", "continuations", "audit", "signals", "call_results",
        "hosts", "leases",
    }  # fmt: skip


async def test_hosts_opening_one_new_database_together_migrate_it_once(
    postgres_db: PostgresDatabase,
) -> None:
    stores = [PostgresStore(postgres_db.url) for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    for store in stores:
        await store.close()
    assert versions(postgres_db) == list(range(1, LATEST_VERSION + 1))


async def test_a_newer_schema_is_refused(postgres_db: PostgresDatabase, clock: ManualClock) -> None:
    async with open_system(postgres_db, clock):
        pass
    postgres_db.execute("INSERT INTO schema_version (version) VALUES ($1)", LATEST_VERSION + 1)
    with pytest.raises(SchemaVersionError, match=f"schema version {LATEST_VERSION + 1}, newer"):
        async with open_system(postgres_db, clock):
            pass


async def test_a_database_of_the_first_version_is_migrated_and_keeps_its_rows(
    postgres_db: PostgresDatabase, clock: ManualClock
) -> None:
    # What version 1 of the PostgreSQL store wrote: its schema, and an alarm due in a second.
    c = Continuation(Notifier)
    chain = Codec(trusted=True).dumps(chain_of(c.fire(c.result)))
    now = clock.now()
    postgres_db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    postgres_db.execute(MIGRATIONS[0])
    postgres_db.execute("INSERT INTO schema_version (version) VALUES (1)")
    postgres_db.execute(
        "INSERT INTO continuations (id, binding, instance, strategy, status, chain,"
        " chain_text, options, due_at, scheduled_at, created_at, updated_at, version)"
        " VALUES ('old-1', 'Notifier', 'n', 'alarm', 'pending', $1, 'fire(<result>)', '{}',"
        " $2, $2, $3, $3, '1')",
        chain, now + 1, now,
    )  # fmt: skip
    async with open_system(postgres_db, clock) as system:
        await system.advance(1)
        assert (await system.continuation("old-1")).status == ContinuationStatus.COMPLETED
        assert await system.get(Notifier, "n").storage_get("fired") == "old-1"
    assert versions(postgres_db) == list(range(1, LATEST_VERSION + 1))
    assert postgres_db.fetch("SELECT to_regclass('leases') IS NOT NULL")[0][0]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("postgresql://postgres@127.0.0.1:1/test", "cannot open"),
        ("postgresql://postgres@127.0.0.1:notaport/test", "cannot open"),
        ("postgresql://postgres:secret@127.0.0.1:1/test", "cannot open"),
        ("no such database", "cannot open"),
        ("no such schema", "cannot open"),
    ],
)
async def test_a_database_that_cannot_be_opened_is_a_store_error_and_leaks_nothing(
    postgres_db: PostgresDatabase, clock: ManualClock, where: str, message: str
) -> None:
    if where == "no such database":
        where = postgres_db.url.replace("/test?", "/no_such_database_here?")
    elif where == "no such schema":
        where = with_search_path(postgres_db.url, "no_such_schema_here")
    descriptors = set(os.listdir("/proc/self/fd"))
    system = ActorSystem(where, actors=[Notifier], clock=clock)
    with pytest.raises(StoreError, match=message) as raised:
        await system.start()
    assert "secret" not in str(raised.value)
    assert "\n" not in str(raised.value)
    await system.aclose()
    await asyncio.sleep(0)  # one turn of the loop: a closed transport lets go of its socket
    assert set(os.listdir("/proc/self/fd")) <= descriptors
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_a_closed_store_refuses_work_with_a_store_error(
    postgres_db: PostgresDatabase,
) -> None:
    store = PostgresStore(postgres_db.url)
    with pytest.raises(StoreError, match="closed"):
        await store.get("x")
    with pytest.raises(StoreError, match="closed"):
        _ = store.pool
    with pytest.raises(StoreError, match="closed"):
        await store.listen(lambda due: None)
    await store.open()
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.apply([turn()])


async def test_a_listener_that_cannot_connect_is_a_store_error(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError(111, "Connect call failed")

    monkeypatch.setattr(asyncpg, "connect", refused)
    with pytest.raises(StoreError, match=r"cannot listen on .*Connect call failed"):
        await store.listen(lambda due: None)


async def test_a_database_error_in_a_batch_is_a_store_error_and_applies_nothing(
    store: PostgresStore,
) -> None:
    with pytest.raises(StoreError, match="database error") as raised:
        await store.apply([turn(writes={"k": b"1"}, new=[new("c1", key="k"), new("c2", key="k")])])
    assert isinstance(raised.value.__cause__, asyncpg.UniqueViolationError)
    assert await state_of(store, "A", "a") == {}
    assert await store.get("c1") is None


@pytest.mark.parametrize(("durability", "setting"), [("full", "on"), ("normal", "off")])
async def test_durability_sets_synchronous_commit(
    postgres_db: PostgresDatabase, durability: Any, setting: str
) -> None:
    store = PostgresStore(postgres_db.url, durability=durability)
    await store.open()
    try:
        assert await store.pool.fetchval("SHOW synchronous_commit") == setting
        assert await store.pool.fetchval("SELECT current_schema()") == postgres_db.schema
    finally:
        await store.close()


def test_the_password_never_shows() -> None:
    url = "postgresql://app:s3cret@db.example:5432/app?password=other&search_path=x"
    assert redact(url) == "postgresql://app:***@db.example:5432/app?password=***&search_path=x"
    assert "s3cret" not in repr(PostgresStore(url))
    assert redact("postgresql://app@db/app") == "postgresql://app@db/app"


# -- PostgreSQL twins of the system-level tests on SQLite files ------------------------------


async def test_a_firing_changed_by_another_process_is_not_committed(
    postgres_db: PostgresDatabase, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_system(postgres_db, clock) as system:
        cid = await system.get(Notifier, "n").schedule()

        def cancel_first(commits: Any, n: int) -> None:
            # Another process cancels the row between the fetch and the firing's commit.
            if n == 1:
                postgres_db.execute(
                    "UPDATE continuations SET status = 'cancelled', revision = revision + 1"
                    " WHERE id = $1",
                    cid,
                )

        hook_commits(monkeypatch, system, cancel_first)
        received: list[DownstreamMessage] = []
        system.add_downstream_listener(received.append)
        await system.advance(1)
        assert (await system.continuation(cid)).status == ContinuationStatus.CANCELLED
        assert await system.get(Notifier, "n").storage.get("fired") is None
        assert received == []


@pytest.mark.parametrize(
    "query",
    [
        "SELECT min(due_at) FROM continuations WHERE status = 'pending'",
        "SELECT id FROM continuations WHERE status = 'pending' AND due_at <= 1"
        " ORDER BY due_at, id LIMIT 5",
        "SELECT id FROM continuations WHERE status = ANY('{completed}') AND finished_at < 1",
        "SELECT id FROM continuations WHERE binding = 'A' AND instance = 'a'"
        " AND wait_name = 'go' AND status = 'pending' AND phase = 'waiting'"
        " AND NOT cancel_requested ORDER BY id LIMIT 1",
    ],
)
async def test_the_scheduler_queries_can_use_an_index(
    store: PostgresStore, postgres_db: PostgresDatabase, query: str
) -> None:
    # An empty table is scanned whatever its indexes; without scans, the plan shows whether
    # an index serves the query (and its order) at all.
    async with store.pool.acquire() as connection, connection.transaction():
        await connection.execute("SET LOCAL enable_seqscan = off")
        plan = " ".join(row[0] for row in await connection.fetch(f"EXPLAIN {query}"))
    assert "Index" in plan, plan
    assert "Sort" not in plan, plan


# -- the lease fence -------------------------------------------------------------------------


def lease(database: PostgresDatabase, host: str, epoch: int, expires_in: float) -> None:
    database.execute(
        "INSERT INTO leases (binding, instance, host, epoch, expires_at)"
        " VALUES ('A', 'a', $1, $2, extract(epoch FROM clock_timestamp()) + $3)"
        " ON CONFLICT (binding, instance) DO UPDATE SET host = excluded.host,"
        " epoch = excluded.epoch, expires_at = excluded.expires_at",
        host, epoch, expires_in,
    )  # fmt: skip


async def test_a_turn_under_the_current_lease_is_accepted(
    store: PostgresStore, postgres_db: PostgresDatabase
) -> None:
    lease(postgres_db, "h1", 3, 30)
    refused = await store.apply([turn(writes={"k": b"1"}, lease=Lease("h1", 3))])
    assert refused == {}
    assert await state_of(store, "A", "a") == {"k": b"1"}


@pytest.mark.parametrize(
    ("held", "ran_under"),
    [
        (("h1", 4, 30.0), Lease("h1", 3)),  # taken again since: a newer epoch
        (("h2", 3, 30.0), Lease("h1", 3)),  # another host took it
        (("h1", 3, -1.0), Lease("h1", 3)),  # expired while the host stalled
        (None, Lease("h1", 3)),  # never leased, or the row is gone
    ],
    ids=["newer epoch", "other host", "expired", "no lease"],
)
async def test_a_turn_under_a_lost_lease_is_refused_with_the_later_turns_of_its_actor(
    store: PostgresStore,
    postgres_db: PostgresDatabase,
    held: tuple[str, int, float] | None,
    ran_under: Lease,
) -> None:
    if held is not None:
        lease(postgres_db, *held)
    refused = await store.apply(
        [
            turn(writes={"k": b"1"}, new=[new("c1")], lease=ran_under),
            turn(instance="b", writes={"k": b"b"}),
            turn(writes={"k": b"2"}),
            turn(writes={"k": b"3"}, lease=ran_under),
        ]
    )
    assert refused == {0: Refusal.LEASE_LOST, 2: Refusal.LEASE_LOST, 3: Refusal.LEASE_LOST}
    assert await state_of(store, "A", "a") == {}
    assert await store.get("c1") is None
    assert await state_of(store, "A", "b") == {"k": b"b"}


async def test_a_refused_standalone_turn_under_a_lost_lease_refuses_nothing_else(
    store: PostgresStore, postgres_db: PostgresDatabase
) -> None:
    lease(postgres_db, "h2", 1, 30)
    refused = await store.apply(
        [turn(writes={"k": b"1"}, lease=Lease("h1", 1), standalone=True), turn(writes={"k": b"2"})]
    )
    assert refused == {0: Refusal.LEASE_LOST}
    assert await state_of(store, "A", "a") == {"k": b"2"}


async def test_the_first_refusal_of_an_actor_gives_the_reason_to_its_later_turns(
    store: PostgresStore, postgres_db: PostgresDatabase
) -> None:
    lease(postgres_db, "h1", 1, 30)
    await store.apply([turn(new=[new("c1")])])
    c1 = await row_of(store, "c1")
    stale = change(c1, revision=5, status="completed")
    refused = await store.apply(
        [
            turn(update=stale, lease=Lease("h1", 1)),
            turn(writes={"k": b"1"}, lease=Lease("h1", 0)),
            turn(writes={"k": b"2"}),
        ]
    )
    assert refused == {0: Refusal.CHANGED, 1: Refusal.LEASE_LOST, 2: Refusal.CHANGED}


async def blocked(
    store: PostgresStore, waiter: asyncpg.Connection[Any], blocker: int, task: asyncio.Future[Any]
) -> None:
    """Return once the server shows ``waiter`` waiting for a lock held by backend
    ``blocker``; fail if ``task`` (what ``waiter`` runs) finishes without waiting."""
    query = "SELECT pg_blocking_pids($1)"
    while blocker not in await store.pool.fetchval(query, waiter.get_server_pid()):
        assert not task.done(), "it did not wait for the other transaction"


async def test_a_takeover_waits_for_a_commit_that_passed_the_lease_check(
    store: PostgresStore, postgres_db: PostgresDatabase
) -> None:
    lease(postgres_db, "h1", 1, 30)
    other_host = await asyncpg.connect(postgres_db.url)
    try:
        async with store.pool.acquire() as connection, connection.transaction():
            assert await _fence(connection, [turn(lease=Lease("h1", 1))]) == {}
            takeover = asyncio.ensure_future(
                other_host.execute("UPDATE leases SET host = 'h2', epoch = epoch + 1")
            )
            await blocked(store, other_host, connection.get_server_pid(), takeover)
        assert await takeover == "UPDATE 1"
    finally:
        await other_host.close()


async def test_a_signal_sent_while_its_waiter_commits_on_another_host_is_not_lost(
    store: PostgresStore, postgres_db: PostgresDatabase
) -> None:
    # Neither transaction sees the other's uncommitted row: without a lock on the signal's
    # name, the signal would be buffered while its waiter waits for it forever.
    other_host = await asyncpg.connect(postgres_db.url)
    try:
        async with store.pool.acquire() as connection, connection.transaction():
            await write(connection, [turn(new=[waiter("w")])])
            send = turn(instance="b", signals=[SignalSend("A", "a", "go", b"p")])
            signal = asyncio.ensure_future(_apply_on(other_host, send))
            await blocked(store, other_host, connection.get_server_pid(), signal)
        await signal
    finally:
        await other_host.close()
    assert (await row_of(store, "w")).outcome == b"p"
    assert postgres_db.fetch("SELECT count(*) FROM signals")[0][0] == 0


async def _apply_on(connection: asyncpg.Connection[Any], commit: Commit) -> None:
    async with connection.transaction():
        await write(connection, [commit])


# -- the continuation_due notification -------------------------------------------------------


class Heard:
    """Collects the due times a listener hears, and lets a test await the next one.

    Every store on the server shares the channel (other tests, other test runs), so only
    times from ``base`` on (a random moment in 1970, which no one else uses) are kept.
    """

    def __init__(self, base: float) -> None:
        self.base = base
        self.times: list[float] = []
        self._taken = 0
        self._changed = asyncio.Event()

    def __call__(self, due: float) -> None:
        if self.base <= due < self.base + 1000:
            self.times.append(due - self.base)
            self._changed.set()

    async def next(self) -> float:
        """The next time heard, less ``base``; a notification takes milliseconds, so 10 s
        without one means none is coming."""
        while len(self.times) == self._taken:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), 10)
        self._taken += 1
        return self.times[self._taken - 1]


@pytest.fixture
def base() -> float:
    return float(random.randrange(10**6, 2 * 10**6))


@pytest.fixture
async def heard(postgres_db: PostgresDatabase, base: float) -> AsyncIterator[Heard]:
    """What a second store on the same schema (another host) hears."""
    store = PostgresStore(postgres_db.url)
    await store.open()
    heard = Heard(base)
    await store.listen(heard)
    yield heard
    await store.close()


async def test_another_store_hears_the_earliest_due_time_of_a_commit(
    store: PostgresStore, heard: Heard, base: float
) -> None:
    await store.apply(
        [turn(base, new=[new("late", due=base + 50), new("soon", due=base + 5), waiter("w")])]
    )
    assert await heard.next() == 0  # the waiter may take a signal waiting for it: due now
    await store.apply(
        [turn(base, new=[new("x", due=base + 50)]), turn(base + 1, new=[new("y", due=base + 7)])]
    )
    assert await heard.next() == 7
    row = await row_of(store, "late")
    await store.apply([turn(base + 1, update=change(row, due_at=base + 9, attempts=1))])
    assert await heard.next() == 9
    await store.apply([turn(base + 2, cancels=["x"])])
    assert await heard.next() == 2
    await store.apply([turn(base + 4, signals=[SignalSend("A", "a", "go", b"p")])])
    assert await heard.next() == 4
    assert heard.times == [0, 7, 9, 2, 4]


async def test_a_commit_with_nothing_due_notifies_no_one(
    store: PostgresStore, heard: Heard, base: float
) -> None:
    await store.apply([turn(base, writes={"k": b"v"}, call_result=("key", b"r"))])
    await store.apply([turn(base, new=[new("never", due=None)])])
    await store.apply([turn(base, new=[new("c", due=base + 3)])])
    row = await row_of(store, "c")
    await store.apply([turn(base, update=change(row, status="completed", due_at=None))])
    # Notifications arrive in commit order: when this one comes, the others would have.
    await store.apply([turn(base, new=[new("marker", due=base + 1)])])
    assert await heard.next() == 3
    assert await heard.next() == 1
    assert heard.times == [3, 1]


async def test_a_listener_ignores_a_notification_without_a_time(
    store: PostgresStore,
    heard: Heard,
    base: float,
    postgres_db: PostgresDatabase,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for payload in ("soon", "nan", ""):
        postgres_db.execute(
            "SELECT pg_notify('continuation_due:' || $1, $2)", postgres_db.schema, payload
        )
    await store.apply([turn(base, new=[new("c", due=base + 3)])])
    assert await heard.next() == 3
    assert heard.times == [3]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert "'soon'" in warnings[0]


async def test_a_notification_of_another_schema_is_not_heard(
    store: PostgresStore, heard: Heard, base: float, postgres_db: PostgresDatabase
) -> None:
    postgres_db.execute("SELECT pg_notify('continuation_due:some_other_schema', '1.0')")
    await store.apply([turn(base, new=[new("c", due=base + 3)])])
    assert await heard.next() == 3
    assert heard.times == [3]


async def test_a_failing_listener_is_logged_and_the_others_keep_listening(
    store: PostgresStore,
    postgres_db: PostgresDatabase,
    base: float,
    caplog: pytest.LogCaptureFixture,
) -> None:
    listener = PostgresStore(postgres_db.url)
    await listener.open()
    heard = Heard(base)

    def broken(due: float) -> None:
        if due >= base:
            raise RuntimeError("listener bug")

    await listener.listen(broken)
    await listener.listen(heard)
    try:
        await store.apply([turn(base, new=[new("c", due=base + 3)])])
        assert await heard.next() == 3
        await store.apply([turn(base, new=[new("d", due=base + 4)])])
        assert await heard.next() == 4
    finally:
        await listener.close()
    assert sum("listener failed" in r.getMessage() for r in caplog.records) == 2


async def test_a_listener_whose_connection_drops_listens_again(
    store: PostgresStore, postgres_db: PostgresDatabase, base: float
) -> None:
    listener = PostgresStore(postgres_db.url)
    await listener.open()
    heard = Heard(base)
    woken: list[float] = []

    def hear(due: float) -> None:
        heard(due)
        if due == 0.0:
            woken.append(due)

    try:
        await listener.listen(hear)
        connection = listener._listener
        assert connection is not None
        postgres_db.execute("SELECT pg_terminate_backend($1)", connection.get_server_pid())
        # Listening again, it says at once that anything may be due: nothing was heard meanwhile.
        async with asyncio.timeout(10):
            while not woken:
                await asyncio.sleep(0.01)  # polling for the reconnection, not for a timer
        assert listener._listener is not connection
        await store.apply([turn(base, new=[new("c", due=base + 3)])])
        assert await heard.next() == 3
    finally:
        await listener.close()
