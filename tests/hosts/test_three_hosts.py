"""Three hosts sharing one PostgreSQL database, one of them killed and one stalled.

The hosts are real processes (``python -m continuation serve --db postgresql://...``) with
two-second leases. Alarms fire across all three and each makes a remote call; mid-run one
host is SIGKILLed and another SIGSTOPped past its lease, then resumed. Every effect must
happen exactly once, and nothing the stalled host ran before it stopped may commit after
its lease was lost.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from continuation._store.postgres_hosts import NOW
from operation_chain import RemoteError
from rpc import HttpTransport, create_rpc_client

from ..e2e.conftest import free_port
from ..e2e.test_actor_system import _until_listening

APP = Path(__file__).with_name("cluster_app.py")
WORKERS = 6
TOKENS_PER_WORKER = 30
SPREAD = 4.0  # seconds over which each worker's alarms fall due


class Host:
    """One host process."""

    def __init__(self, name: str, database: str) -> None:
        self.name = name
        self.port = free_port()
        command = [
            sys.executable, "-m", "continuation", "serve", f"{APP}:create_system",
            "--port", str(self.port), "--db", database, "--log-level", "warning",
            "--host-id", name,
        ]  # fmt: skip
        self.process = subprocess.Popen(command)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/rpc"

    async def call(self, binding: str, instance: str, method: str, *args: Any) -> Any:
        transport = HttpTransport(self.url)
        async with create_rpc_client(binding, instance, transport=transport, timeout=60) as actor:
            return await getattr(actor, method)(*args)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung host
            self.process.kill()
            self.process.wait()


@pytest.fixture
async def hosts(postgres_url: str) -> AsyncIterator[list[Host]]:
    started = [Host(f"h{n}", postgres_url) for n in (1, 2, 3)]
    try:
        for host in started:
            await _until_listening(host.port, host.process)
        yield started
    finally:
        for host in started:
            host.stop()


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
    """Poll ``check`` until it holds; the hosts run on the real clock."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)


async def test_three_hosts_lose_nothing_when_one_dies_and_one_stalls(
    hosts: list[Host], postgres_url: str, tmp_path: Path
) -> None:
    h1, h2, h3 = hosts
    db = await asyncpg.connect(postgres_url)
    try:

        async def count(where: str) -> int:
            return int(await db.fetchval(f"SELECT count(*) FROM continuations WHERE {where}"))

        tokens = {
            f"w-{w}": [f"w{w}-t{t}" for t in range(TOKENS_PER_WORKER)] for w in range(WORKERS)
        }
        # Spread the workers over the hosts: each plans on the host it is called through.
        for n, (worker, its_tokens) in enumerate(tokens.items()):
            assert await hosts[n % 3].call("Worker", worker, "plan", its_tokens, SPREAD) == len(
                its_tokens
            )
        total = WORKERS * TOKENS_PER_WORKER
        await _until(
            lambda: _at_least(count("status = 'completed'"), total // 4),
            "a quarter of the alarms fired",
            30,
        )

        # SIGKILL: h1's leases expire and the others take its actors and its work over.
        h1.process.kill()
        h1.process.wait()

        # SIGSTOP h2 in the middle of a turn on Slow/s: the turn has written but not committed.
        announce = tmp_path / "slow-turn-started"
        slow_call = asyncio.create_task(h2.call("Slow", "s", "write_slowly", 1, str(announce), 0.5))
        await _until(lambda: _exists(announce), "the slow turn started on h2", 30)
        h2.process.send_signal(signal.SIGSTOP)
        try:
            # h3 cannot reach h2, waits out its lease, takes Slow/s over and reloads it: the
            # stalled turn's write is not there.
            assert await h3.call("Slow", "s", "read") is None
            assert await h3.call("Slow", "s", "write", 7) == 7
            # Keep h2 stopped until its heartbeat is seen lost: all its leases are up.
            await _until(
                lambda: _is_true(
                    db.fetchval(f"SELECT expires_at < {NOW} FROM hosts WHERE id='h2'")
                ),
                "h2's heartbeat expired",
                30,
            )
        finally:
            h2.process.send_signal(signal.SIGCONT)
        # Resumed, h2 finishes the turn, but its commit is refused: its lease is gone.
        with pytest.raises(RemoteError) as refused:
            await slow_call
        assert refused.value.type_name.endswith("LeaseLostError")
        assert await h2.call("Slow", "s", "read") == 7

        try:
            await _until(
                lambda: _at_least(count("status = 'completed'"), 2 * total),
                "every alarm and remote call completed",
                90,
            )
        except AssertionError as timed_out:
            rows = await db.fetch(
                "SELECT status, phase, strategy, attempts, count(*) FROM continuations"
                " WHERE status <> 'completed' GROUP BY 1, 2, 3, 4"
            )
            leases = await db.fetch(f"SELECT *, expires_at - {NOW} AS left FROM leases")
            hosts_ = await db.fetch(f"SELECT id, expires_at - {NOW}, status FROM hosts")
            raise AssertionError(
                f"not completed: {rows}\nleases: {leases}\nhosts: {hosts_}"
            ) from timed_out
        assert await count("status <> 'completed'") == 0
    finally:
        await db.close()

    # Exactly once: each alarm fired once, each remote call ran once on its ledger, and each
    # answer was delivered once, though a host died and another stalled along the way.
    ledgers: dict[str, int] = {}
    for n in range(3):
        ledgers.update(await h3.call("Ledger", f"l-{n}", "counts"))
    for worker, its_tokens in tokens.items():
        counts = await h2.call("Worker", worker, "counts")
        assert counts["a"] == dict.fromkeys(its_tokens, 1), worker
        assert counts["r"] == dict.fromkeys(its_tokens, 1), worker
    assert ledgers == dict.fromkeys([t for ts in tokens.values() for t in ts], 1)


async def _at_least(value: Awaitable[int], minimum: int) -> bool:
    return await value >= minimum


async def _is_true(value: Awaitable[object]) -> bool:
    return bool(await value)


async def _exists(path: Path) -> bool:
    return path.exists()
