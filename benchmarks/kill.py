"""Kill test at full size: SIGKILL a worker at random moments, then check exactly-once.

    python benchmarks/kill.py [--kills 25] [--actors 8] [--per-actor 1250] [--seed N]
                              [--durability full|normal]

A worker process (``tests/continuation/kill_worker.py``) schedules ``actors * per_actor``
numbered continuations in crash-safe batches, plus a follow-up for every fourth one, on
the real clock; each handler counts its own number in actor storage. The worker is killed
with SIGKILL at random moments (during start-up and recovery, scheduling, or firing) at
least ``--kills`` times, and restarted on the same SQLite file each time; after every kill
the database must be consistent, and after the last run every continuation must have
completed with its effect applied exactly once. Prints a table; exits 1 on any violation.
The suite runs a bounded version: ``tests/continuation/test_kill.py``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.continuation.kill_worker import Workload, check_database, run_campaign


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=25, help="at least this many SIGKILLs")
    parser.add_argument("--actors", type=int, default=8)
    parser.add_argument("--per-actor", type=int, default=1250)
    parser.add_argument("--batch", type=int, default=125, help="continuations per scheduling turn")
    parser.add_argument("--durability", choices=["full", "normal"], default="full")
    parser.add_argument("--seed", type=int, default=None, help="draws the same kill moments")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    workload = Workload(args.actors, args.per_actor, args.batch, durability=args.durability)

    with tempfile.TemporaryDirectory(prefix="ocan-kill-") as directory:
        database = str(Path(directory) / "kill.db")
        try:
            campaign = run_campaign(database, workload, min_kills=args.kills, seed=seed)
        except AssertionError as exc:
            print(f"VIOLATION: {exc}")
            return 1
        problems = check_database(database, workload, final=True)

    phases = ", ".join(f"{phase} {n}" for phase, n in sorted(campaign.phases.items()))
    rows = [
        ("seed", str(seed)),
        ("continuations (with follow-ups)", f"{workload.continuations:,}"),
        ("durability", workload.durability),
        ("worker runs", str(campaign.runs)),
        ("SIGKILLs", f"{campaign.kills} (target >= {args.kills})"),
        ("kills landed in", phases),
        (
            "durable firings per killed run, median / max",
            f"{statistics.median(campaign.committed_before_kill):.0f} /"
            f" {max(campaign.committed_before_kill)}",
        ),
        ("violations of exactly-once", str(len(problems))),
        ("wall time", f"{campaign.seconds:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for problem in problems[:20]:
        print(f"  {problem}")
    ok = not problems and campaign.kills >= args.kills
    print()
    print("every handler applied exactly once" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
