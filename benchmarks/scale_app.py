"""The application ``benchmarks/scale.py`` serves on each host.

    SCALE_HOST_ID=h1 SCALE_LEASE_TTL=10 python -m continuation serve \\
        benchmarks/scale_app.py:create_system --db postgresql://...?search_path=... --port 8001

``Sink`` takes the throughput workload: continuations all due at one instant, each adding one
to its own storage key, so a key above one is an effect applied twice. ``Ticker`` keeps a
chain of alarms firing every ``period`` seconds and records which host fired each tick and
when, for the fail-over measure; a tick out of order (doubled or skipped) is counted.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from continuation import Actor, ActorSystem, AlarmInfo, Continuation

HOST = os.environ.get("SCALE_HOST_ID", "")
LEASE_TTL = float(os.environ.get("SCALE_LEASE_TTL", "10"))


class Sink(Actor):
    """Schedules alarms due at one instant; each adds one to its own key."""

    def schedule(self, first: int, count: int, due: float) -> int:
        c = Continuation(self)
        at = datetime.fromtimestamp(due, UTC)
        for number in range(first, first + count):
            self.continue_(c.record(number, c.result), strategy="alarm", at=at)
        return count

    def record(self, number: int, fired: AlarmInfo) -> None:
        key = f"n{number}"
        self.storage.put(key, self.storage.get(key, 0) + 1)

    def tally(self) -> dict[str, int]:
        """How many keys were written, and how many of them more than once."""
        written = self.storage.list(prefix="n")
        return {"keys": len(written), "repeated": sum(1 for n in written.values() if n != 1)}


class Ticker(Actor):
    """A chain of alarms, one every ``period`` seconds, each scheduling the next."""

    def start(self, period: float) -> str:
        c = Continuation(self)
        self.continue_(c.tick(0, period, c.result), delay=period)
        return HOST

    def tick(self, number: int, period: float, fired: AlarmInfo) -> None:
        expected = self.storage.get("next", 0)
        if number != expected:  # a tick fired twice (number < expected) or one was lost
            self.storage.put("out_of_order", self.storage.get("out_of_order", 0) + 1)
        self.storage.put("next", number + 1)
        if self.storage.get(f"first:{HOST}") is None:
            self.storage.put(f"first:{HOST}", time.time())
        self.storage.put(f"ticks:{HOST}", self.storage.get(f"ticks:{HOST}", 0) + 1)
        c = Continuation(self)
        self.continue_(c.tick(number + 1, period, c.result), delay=period)

    def report(self) -> dict[str, Any]:
        """Per host: the first tick's time and the ticks fired; and the ticks out of order."""
        return {
            "first": {k[6:]: v for k, v in self.storage.list(prefix="first:").items()},
            "ticks": {k[6:]: v for k, v in self.storage.list(prefix="ticks:").items()},
            "out_of_order": self.storage.get("out_of_order", 0),
        }


def create_system(database: str) -> ActorSystem:
    return ActorSystem(database, actors=[Sink, Ticker], host_id=HOST or None, lease_ttl=LEASE_TTL)
