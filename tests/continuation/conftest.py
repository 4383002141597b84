"""Fixtures for continuation tests: a fresh database per test, on each store, and a manual
clock.

``db_path`` is parametrized: every test that opens a system runs once on an SQLite file
(``[sqlite]``) and once on a PostgreSQL schema of its own (``[postgres]``, skipped when no
server is reachable; see ``tests/postgres.py``). Tests about SQLite files as such take
``sqlite_path``; tests that reach into PostgreSQL take ``postgres_db``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from continuation import Actor, ActorSystem, ManualClock
from continuation._store.base import Commit, Refusal, Store
from tests.postgres import PostgresDatabase, fresh_database

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

OpenSystem = Callable[..., ActorSystem]
CommitHook = Callable[[Sequence[Commit], int], None]


def hook_commits(monkeypatch: pytest.MonkeyPatch, system: ActorSystem, hook: CommitHook) -> None:
    """Call ``hook(commits, n)`` before the store applies its ``n``-th batch (from 1); what it
    raises fails that batch, as a disk error would."""
    store = system._store
    original = store.apply
    calls = 0

    async def apply(commits: Sequence[Commit]) -> dict[int, Refusal]:
        nonlocal calls
        calls += 1
        hook(commits, calls)
        return await original(commits)

    monkeypatch.setattr(store, "apply", apply)


@pytest.fixture
def sqlite_path(tmp_path: Path) -> str:
    """A path for an SQLite database file, for tests about SQLite as such."""
    return str(tmp_path / "actors.db")


@pytest.fixture
def postgres_db() -> Iterator[PostgresDatabase]:
    """A fresh PostgreSQL schema, for tests that reach into the database behind the store."""
    with fresh_database() as database:
        yield database


@pytest.fixture(params=["sqlite", "postgres"])
def db_path(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The ``database`` argument of the test's systems: an SQLite file, or the URL of a
    fresh PostgreSQL schema (migrated ahead, as an SQLite file is created in no time; the
    tests of opening and migrating take an empty ``postgres_db``)."""
    if request.param == "sqlite":
        yield str(tmp_path / "actors.db")
    else:
        with fresh_database(migrated=True) as database:
            yield database.url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=START)


@pytest.fixture
async def open_system(db_path: str, clock: ManualClock) -> AsyncIterator[OpenSystem]:
    """Open ActorSystems on the test's database and clock; all are closed at the end."""
    opened: list[ActorSystem] = []

    def open_(*actors: type[Actor], **options: Any) -> ActorSystem:
        options.setdefault("clock", clock)
        system = ActorSystem(options.pop("database", db_path), actors=actors, **options)
        opened.append(system)
        return system

    yield open_
    for system in opened:
        await system.aclose()


async def state_of(store: Store, binding: str, instance: str) -> dict[str, bytes]:
    """One actor's stored values, as the store reads them back."""
    return (await store.load_actor(binding, instance))[0]


async def keys_of(store: Store, binding: str, instance: str) -> dict[str, str]:
    """The dedup keys of one actor's pending continuations, as the store reads them back."""
    return (await store.load_actor(binding, instance))[1]
