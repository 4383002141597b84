"""The stores seen through a system: schema versions, the commit fence, and downstream
release after commit.

Tests that open the database file with ``sqlite3`` are about SQLite as such (``sqlite_path``);
their PostgreSQL twins are in ``test_postgres_store.py``.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest

from continuation import (
    Actor,
    ActorSystem,
    AlarmInfo,
    Continuation,
    ContinuationStatus,
    ManualClock,
    SchemaVersionError,
    StoreError,
)
from continuation._outcomes import completed
from continuation._store.base import Commit, NewContinuation, Refusal
from continuation._store.connect import on_writer_thread
from continuation._store.migrations import LATEST_VERSION, MIGRATIONS
from continuation._store.sqlite import SQLiteStore
from operation_chain import Codec, chain_of
from rpc._host import DownstreamMessage

from .conftest import OpenSystem, hook_commits


class Notifier(Actor):
    def schedule(self) -> str:
        c = Continuation(self)
        return self.continue_(c.fire(c.result), delay=1)

    def fire(self, info: AlarmInfo) -> None:
        self.storage.put("fired", info.id)
        self.send_downstream(["c1", "c2"], {"fired": info.id})

    def storage_get(self, key: str) -> Any:
        return self.storage.get(key)

    def notify(self, payload: Any, fail: bool = False) -> None:
        self.send_downstream("c1", payload)
        if fail:
            raise RuntimeError("after sending")


@pytest.fixture
def open_sqlite(sqlite_path: str, clock: ManualClock) -> OpenSystem:
    """Systems on one SQLite file, for the tests that open the file with ``sqlite3``."""

    def open_(*actors: type[Actor], **options: Any) -> ActorSystem:
        return ActorSystem(sqlite_path, actors=actors, clock=clock, **options)

    return open_


async def test_a_newer_schema_is_refused(open_sqlite: OpenSystem, sqlite_path: str) -> None:
    async with open_sqlite(Notifier):
        pass
    with sqlite3.connect(sqlite_path) as db:
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (LATEST_VERSION + 1,))
    with pytest.raises(SchemaVersionError, match="newer"):
        async with open_sqlite(Notifier):
            pass


async def test_reopening_does_not_migrate_twice(open_sqlite: OpenSystem, sqlite_path: str) -> None:
    for _ in range(2):
        async with open_sqlite(Notifier):
            pass
    with sqlite3.connect(sqlite_path) as db:
        versions = [row[0] for row in db.execute("SELECT version FROM schema_version")]
    assert versions == list(range(1, LATEST_VERSION + 1))


async def test_a_database_of_the_first_version_is_migrated_and_keeps_its_rows(
    open_sqlite: OpenSystem, sqlite_path: str, clock: Any
) -> None:
    # What version 1 of the library wrote: its schema, and an alarm due in a second.
    c = Continuation(Notifier)
    chain = Codec(trusted=True).dumps(chain_of(c.fire(c.result)))
    now = clock.now()
    with sqlite3.connect(sqlite_path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in MIGRATIONS[0].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("INSERT INTO schema_version (version) VALUES (1)")
        db.execute(
            "INSERT INTO continuations (id, binding, instance, strategy, status, chain,"
            " chain_text, options, due_at, scheduled_at, created_at, updated_at, version)"
            " VALUES ('old-1', 'Notifier', 'n', 'alarm', 'pending', ?, 'fire(<result>)', '{}',"
            " ?, ?, ?, ?, '1')",
            (chain, now + 1, now + 1, now, now),
        )
    async with open_sqlite(Notifier) as system:
        await system.advance(1)
        assert (await system.continuation("old-1")).status == ContinuationStatus.COMPLETED
        assert await system.get(Notifier, "n").storage_get("fired") == "old-1"
    with sqlite3.connect(sqlite_path) as db:
        versions = [row[0] for row in db.execute("SELECT version FROM schema_version")]
    assert versions == list(range(1, LATEST_VERSION + 1))


async def test_an_unopenable_database_is_a_store_error(clock: ManualClock, tmp_path: Any) -> None:
    system = ActorSystem(str(tmp_path / "missing-dir" / "x.db"), actors=[Notifier], clock=clock)
    with pytest.raises(StoreError, match="cannot open"):
        async with system:
            pass


async def test_an_sqlite_without_what_the_store_needs_is_refused(
    clock: ManualClock, sqlite_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 32, 3))
    with pytest.raises(StoreError, match=r"3\.33 or newer"):
        async with ActorSystem(sqlite_path, actors=[Notifier], clock=clock):
            pass
    monkeypatch.undo()

    real_connect = sqlite3.connect

    class NoJson(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if "json_each" in sql:
                raise sqlite3.OperationalError("no such table: json_each")
            return super().execute(sql, *args)

    monkeypatch.setattr(sqlite3, "connect", lambda path: real_connect(path, factory=NoJson))
    with pytest.raises(StoreError, match="no JSON functions"):
        async with ActorSystem(sqlite_path, actors=[Notifier], clock=clock):
            pass


async def test_a_firing_changed_by_another_process_is_not_committed(
    open_sqlite: OpenSystem, sqlite_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_sqlite(Notifier) as system:
        cid = await system.get(Notifier, "n").schedule()

        def cancel_first(commits: Any, n: int) -> None:
            # Another process cancels the row between the fetch and the firing's commit.
            if n == 1:
                with sqlite3.connect(sqlite_path) as other:
                    other.execute(
                        "UPDATE continuations SET status = 'cancelled', revision = revision + 1"
                        " WHERE id = ?",
                        (cid,),
                    )

        hook_commits(monkeypatch, system, cancel_first)
        received: list[DownstreamMessage] = []
        system.add_downstream_listener(received.append)
        await system.advance(1)
        assert (await system.continuation(cid)).status == ContinuationStatus.CANCELLED
        assert await system.get(Notifier, "n").storage.get("fired") is None
        assert received == []


async def test_the_fence_query_runs_only_for_a_batch_with_a_changed_row(
    sqlite_path: str,
) -> None:
    # A batch is written first as if nothing changed, each update checking its own row's
    # revision; only a batch where one did not match is written again after the query.
    store = SQLiteStore(sqlite_path, durability="normal")
    await store.open()
    statements: list[str] = []
    try:
        assert store._db is not None
        await on_writer_thread(
            store._db, lambda db, _: db.set_trace_callback(statements.append), None
        )
        now = 1_000.0
        first = NewContinuation("c1", "A", "a", "alarm", b"chain", None, "f()", None, "{}", None,
                                now, None, None, "1")  # fmt: skip
        second = replace(first, id="c2")
        assert await store.apply([Commit("A", "a", now, new=[first, second])]) == {}
        c1, c2 = await store.get("c1"), await store.get("c2")
        assert c1 is not None
        assert c2 is not None
        fence = "LEFT JOIN continuations"
        statements.clear()
        assert await store.apply([Commit("A", "a", now, update=completed(c1, now))]) == {}
        assert not [s for s in statements if fence in s]
        assert [s.split()[0] for s in statements] == ["BEGIN", "UPDATE", "COMMIT"]
        statements.clear()
        stale = replace(completed(c2, now), revision=c2.revision + 1)
        assert await store.apply([Commit("A", "a", now, update=stale)]) == {0: Refusal.CHANGED}
        assert [s for s in statements if fence in s]
        assert [s.split()[0] for s in statements].count("ROLLBACK") == 1
    finally:
        await store.close()
    with sqlite3.connect(sqlite_path) as db:
        assert db.execute(
            "SELECT id, status, revision FROM continuations ORDER BY id"
        ).fetchall() == [
            ("c1", "completed", 1),
            ("c2", "pending", 0),
        ]


async def test_downstream_leaves_after_commit_only(open_system: OpenSystem) -> None:
    async with open_system(Notifier) as system:
        received: list[DownstreamMessage] = []
        unsubscribe = system.add_downstream_listener(received.append)
        system.add_downstream_listener(_broken_listener)
        notifier = system.get(Notifier, "n")
        payload = {"n": [1, 2]}
        await notifier.notify(payload)
        with pytest.raises(RuntimeError):
            await notifier.notify("lost", True)
        cid = await notifier.schedule()
        await system.advance(1)
        assert received == [
            DownstreamMessage("Notifier", "n", ("c1",), {"n": [1, 2]}),
            DownstreamMessage("Notifier", "n", ("c1", "c2"), {"fired": cid}),
        ]
        unsubscribe()
        unsubscribe()
        await notifier.notify("after")
        assert len(received) == 2


async def test_downstream_refuses_what_cannot_cross_the_wire(open_system: OpenSystem) -> None:
    async with open_system(Notifier) as system:
        from operation_chain import UnsupportedTypeError

        with pytest.raises(UnsupportedTypeError):
            await system.get(Notifier, "n").notify(complex(1, 1))
        with pytest.raises(TypeError, match="client_ids"):
            await system.call("Notifier", "n", _chain_send([]))


def _chain_send(ids: Any) -> Any:
    from operation_chain import OperationProxy, chain_of

    return chain_of(OperationProxy().send_downstream(ids, 1))


def _broken_listener(message: DownstreamMessage) -> None:
    raise RuntimeError("listener bug")


async def test_a_firing_whose_commit_failed_fires_again(
    open_system: OpenSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_system(Notifier) as system:
        cid = await system.get(Notifier, "n").schedule()

        def fail_once(commits: Any, n: int) -> None:
            if n == 1:
                raise OSError("transient")

        hook_commits(monkeypatch, system, fail_once)
        await system.advance(1)
        info = await system.continuation(cid)
        # The lost commit is not a failed attempt: the handler's turn simply runs again.
        assert info.status == ContinuationStatus.COMPLETED
        assert info.attempts == 1
        assert [e.event for e in info.audit] == ["scheduled", "completed"]
        assert await system.get(Notifier, "n").storage.get("fired") == cid


@pytest.mark.parametrize(
    "query",
    [
        "SELECT due_at FROM continuations INDEXED BY continuations_due WHERE status = 'pending'"
        " AND due_at IS NOT NULL AND id NOT IN (SELECT value FROM json_each('[\"a\"]'))"
        " ORDER BY due_at, id LIMIT 1",
        "SELECT * FROM continuations INDEXED BY continuations_due WHERE status = 'pending'"
        " AND due_at <= 1 AND id NOT IN (SELECT value FROM json_each('[\"a\"]'))"
        " ORDER BY due_at, id LIMIT 5",
        "SELECT id FROM continuations WHERE status IN ('completed') AND finished_at < 1",
    ],
)
async def test_the_scheduler_queries_use_an_index(
    open_sqlite: OpenSystem, sqlite_path: str, query: str
) -> None:
    # A scan here costs a pass over every pending row: 300 ms per tick with a million.
    async with open_sqlite(Notifier):
        pass
    with sqlite3.connect(sqlite_path) as db:
        plan = " ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {query}"))
    assert "USING" in plan, plan
    assert "INDEX" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


def test_a_system_on_sqlite_never_imports_asyncpg(tmp_path: Any) -> None:
    # asyncpg is a sixth of a second to import and a fifth of the objects every full garbage
    # collection walks; only a PostgreSQL database needs it.
    script = f"""
import asyncio, sys
from continuation import Actor, ActorSystem

class A(Actor):
    def ping(self) -> int:
        return 1

async def main() -> None:
    async with ActorSystem({str(tmp_path / "x.db")!r}, actors=[A]) as system:
        assert await system.get(A, "a").ping() == 1

asyncio.run(main())
print("asyncpg" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
