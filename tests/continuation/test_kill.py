"""Crash safety: SIGKILL a real worker process at random moments, reopen its database, and
check that every handler's effect was applied exactly once.

Each test runs on an SQLite file and on a PostgreSQL schema (the worker gets its URL).
This is the bounded version (about 2,000 continuations, 6 kills, a few seconds);
``python benchmarks/kill.py`` runs the full size. A failure names the seed that drew the
kill moments; ``KILL_TEST_SEED=<seed>`` draws the same ones again (the moments the kills
land on still depend on the machine's timing).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import execute_behind, fresh_database

from .kill_worker import Workload, check_database, run_campaign

KILLS = 6


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An SQLite file, or an empty PostgreSQL schema (the first run creates the tables, and
    may be killed while it does)."""
    if request.param == "sqlite":
        yield str(tmp_path / "kill.db")
    else:
        with fresh_database() as postgres:
            yield postgres.url


def test_sigkill_at_random_moments_applies_every_handler_exactly_once(
    database: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("KILL_TEST_SEED", random.randrange(2**32)))
    workload = Workload(actors=4, per_actor=400, batch=50)

    campaign = run_campaign(
        database, workload, min_kills=KILLS, seed=seed, log=tmp_path / "kill.stderr"
    )

    assert campaign.kills >= KILLS, f"seed {seed}: the work finished after {campaign.kills} kills"
    assert check_database(database, workload, final=True) == [], f"seed {seed}"


def test_the_checker_sees_a_handler_applied_twice(database: str, tmp_path: Path) -> None:
    workload = Workload(actors=1, per_actor=8, batch=8)
    run_campaign(database, workload, min_kills=1, seed=0, log=tmp_path / "kill.stderr")
    assert check_database(database, workload, final=True) == []

    execute_behind(database, "UPDATE actor_state SET value = '2' WHERE key = 'bump:3'")
    execute_behind(database, "UPDATE continuations SET status = 'pending' WHERE key = 'bump:5'")

    problems = check_database(database, workload, final=False)
    assert "t0: bump:3 was applied 2 times" in problems
    assert "t0: bump:5 is pending but applied 1 times" in problems
