"""The application the three-host test serves: alarms that each make a remote call.

python -m continuation serve tests/hosts/cluster_app.py:create_system \\
    --db postgresql://... --host-id h1 --port 8001

Every token's effects are counted where they happen, so the test can check that each one
happened exactly once, whichever host ran it and whatever host died or stalled meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from pathlib import Path

from continuation import Actor, ActorSystem, AlarmInfo, Continuation

LEASE_TTL = 2.0
LEDGERS = 3


class Ledger(Actor):
    """The target of the remote calls: counts each token it is charged for."""

    def add(self, token: str) -> str:
        self.storage.put(f"t:{token}", self.storage.get(f"t:{token}", 0) + 1)
        return token

    def counts(self) -> dict[str, int]:
        return {key[2:]: value for key, value in self.storage.list(prefix="t:").items()}


class Worker(Actor):
    """Schedules one alarm per token; each alarm, when it fires, counts itself and makes a
    remote call to a ledger, whose answer is counted too."""

    def plan(self, tokens: list[str], spread: float) -> int:
        c = Continuation(self)
        for n, token in enumerate(tokens):
            self.continue_(c.fire(c.result, token), delay=spread * n / len(tokens))
        return len(tokens)

    def fire(self, info: AlarmInfo, token: str) -> None:
        self.storage.put(f"a:{token}", self.storage.get(f"a:{token}", 0) + 1)
        c = Continuation(self)
        ledger = Continuation(Ledger)
        self.continue_(
            c.charged(c.result, token),
            strategy="remote-call",
            binding="Ledger",
            instance=f"l-{zlib.crc32(token.encode()) % LEDGERS}",
            call=ledger.add(token),
            timeout=120,
        )

    def charged(self, token: str, expected: str) -> None:
        if token != expected:
            raise ValueError(f"the ledger answered {token!r} for {expected!r}")
        self.storage.put(f"r:{token}", self.storage.get(f"r:{token}", 0) + 1)

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            kind: {key[2:]: value for key, value in self.storage.list(prefix=f"{kind}:").items()}
            for kind in ("a", "r")
        }


class Slow(Actor):
    """A turn that can be caught in the middle: it writes, announces itself by creating a
    file, then waits before returning (and committing)."""

    async def write_slowly(self, value: int, announce: str, seconds: float) -> int:
        self.storage.put("value", value)
        Path(announce).touch()
        await asyncio.sleep(seconds)
        return value

    def write(self, value: int) -> int:
        self.storage.put("value", value)
        return value

    def read(self) -> int | None:
        value = self.storage.get("value")
        return None if value is None else int(value)


def create_system(database: str) -> ActorSystem:
    return ActorSystem(
        database,
        actors=[Ledger, Worker, Slow],
        lease_ttl=float(os.environ.get("CLUSTER_LEASE_TTL", LEASE_TTL)),
    )
