"""Fixtures for continuation tests: a fresh SQLite file per test and a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from continuation import Actor, ActorSystem, ManualClock
from continuation._store.base import Commit, Refusal

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
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "actors.db")


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
