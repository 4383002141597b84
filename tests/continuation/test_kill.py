"""Crash safety: SIGKILL a real worker process at random moments, reopen its database, and
check that every handler's effect was applied exactly once.

This is the bounded version (about 2,000 continuations, 6 kills, a few seconds);
``python benchmarks/kill.py`` runs the full size. A failure names the seed that drew the
kill moments; ``KILL_TEST_SEED=<seed>`` draws the same ones again (the moments the kills
land on still depend on the machine's timing).
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
from pathlib import Path

from .kill_worker import Workload, check_database, run_campaign

KILLS = 6


def test_sigkill_at_random_moments_applies_every_handler_exactly_once(tmp_path: Path) -> None:
    seed = int(os.environ.get("KILL_TEST_SEED", random.randrange(2**32)))
    database = str(tmp_path / "kill.db")
    workload = Workload(actors=4, per_actor=400, batch=50)

    campaign = run_campaign(database, workload, min_kills=KILLS, seed=seed)

    assert campaign.kills >= KILLS, f"seed {seed}: the work finished after {campaign.kills} kills"
    assert check_database(database, workload, final=True) == [], f"seed {seed}"


def test_the_checker_sees_a_handler_applied_twice(tmp_path: Path) -> None:
    database = str(tmp_path / "kill.db")
    workload = Workload(actors=1, per_actor=8, batch=8)
    run_campaign(database, workload, min_kills=1, seed=0)
    assert check_database(database, workload, final=True) == []

    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.execute("UPDATE actor_state SET value = '2' WHERE key = 'bump:3'")
        db.execute("UPDATE continuations SET status = 'pending' WHERE key = 'bump:5'")

    problems = check_database(database, workload, final=False)
    assert "t0: bump:3 was applied 2 times" in problems
    assert "t0: bump:5 is pending but applied 1 times" in problems
