"""Bouncer benchmark: registration, callback throughput and lateness, memory. One table.

    python benchmarks/bouncer.py [--quick] [--pending 100000] [--burst 5000]

The bouncer runs as a real process (``python -m continuation bouncer``, SQLite file in a
temporary directory, ``--min-delay 1``); the benchmark process registers waits over HTTP
(64 requests in flight, keep-alive) and serves the callback receiver with uvicorn on
127.0.0.1, checking every signature.

Rows:
- registration: 100,000 waits due in about two hours (never during the run), registered
  over HTTP; waits per second, each one durable (group-committed, fsynced) before its 201.
- callbacks: then 5,000 more waits, all due at the same instant a few seconds later.
  Throughput is 5,000 over the time from the due instant to the last callback's arrival;
  lateness is each callback's arrival at the receiver minus its due time (p50, p99, max).
  Every wait must arrive exactly once and be recorded ``delivered``.
- memory: resident memory (VmRSS) of a fresh bouncer process on the database with 100,000
  pending waits, once it answers and its delivery loop has made its first pass, minus the
  same for a fresh process on an empty database (median of 3 processes each); start-up is
  the time until the process answers ``GET /health``.

Targets: every burst wait delivered exactly once; memory growth < 50 MB with 100,000 pending
(only the next due time is in memory). Exits 1 if a target is missed. ``--quick`` shrinks
the sizes to 10,000 pending and 1,000 in the burst for a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import uvicorn
from continuations import Row, print_table
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from continuation.bouncer import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature

TOKEN = "benchmark-token-0123456789abcdef"
KEY = b"benchmark-signing-key-0123456789abcdef"
IN_FLIGHT = 64
MEMORY_GROWTH_TARGET_MB = 50.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Bouncer:
    """A ``python -m continuation bouncer`` process."""

    def __init__(self, workdir: Path, db: Path) -> None:
        tokens, key = workdir / "tokens", workdir / "key"
        tokens.write_text(TOKEN + "\n")
        key.write_bytes(KEY)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable, "-m", "continuation", "bouncer", "--db", str(db),
            "--port", str(self.port), "--min-delay", "1", "--max-delay", "7200",
            "--token-file", str(tokens), "--signing-key-file", str(key),
            "--log-level", "warning",
        ]  # fmt: skip
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)

    async def ready(self) -> float:
        """Wait until it answers; return the seconds that took."""
        async with httpx.AsyncClient(timeout=1) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the bouncer exited with {self.process.returncode}")
                try:
                    await client.get(f"{self.url}/health")
                    return time.perf_counter() - self.started
                except httpx.TransportError:
                    await asyncio.sleep(0.02)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Receiver:
    """The callback receiver: verifies each signature, records when each wait arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.repeats = 0
        self.bad = 0
        self.done = asyncio.Event()
        self.expected = 0
        self.app = Starlette(routes=[Route("/cb", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        now = time.time()
        try:
            verify_signature(
                KEY, request.headers[TIMESTAMP_HEADER], body, request.headers[SIGNATURE_HEADER]
            )
        except Exception:
            self.bad += 1
            return Response(status_code=401)
        wait_id = body[7:39].decode()  # {"id":"<32 hex>",...: cheaper than parsing
        if wait_id in self.arrived:
            self.repeats += 1
        else:
            self.arrived[wait_id] = now
        if len(self.arrived) >= self.expected:
            self.done.set()
        return Response(status_code=204)


async def serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, log_level="warning", backlog=4096
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, port


async def register(url: str, bodies: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
    """POST every body with IN_FLIGHT requests at a time; the answers and the seconds taken."""
    answers: list[dict[str, Any]] = [{}] * len(bodies)
    headers = {"authorization": f"Bearer {TOKEN}"}
    # One keep-alive connection per worker, each in its own small pool (httpcore scans a
    # pool's connections on every request, which dominates with 64 in one pool).
    clients = [
        httpx.AsyncClient(base_url=url, headers=headers, timeout=60) for _ in range(IN_FLIGHT)
    ]
    next_index = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < len(bodies):
            index, next_index = next_index, next_index + 1
            response = await client.post("/waits", json=bodies[index])
            if response.status_code != 201:
                raise RuntimeError(f"registration failed: {response.text}")
            answers[index] = response.json()

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker(client) for client in clients))
    finally:
        for client in clients:
            await client.aclose()
    return answers, time.perf_counter() - start


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def load_and_burst(workdir: Path, pending: int, burst: int) -> tuple[list[Row], Path]:
    db = workdir / "waits.db"
    bouncer = Bouncer(workdir, db)
    receiver = Receiver()
    server, task, port = await serve(receiver.app)
    callback = f"http://127.0.0.1:{port}/cb"
    rows: list[Row] = []
    try:
        await bouncer.ready()
        far = [{"delay": 7000, "callback": callback, "payload": {"n": n}} for n in range(pending)]
        _, took = await register(bouncer.url, far)
        rows.append(Row(f"registration ({pending:,} over HTTP)", f"{pending / took:,.0f} /s"))

        # Registering the burst takes a while too: make them due once it surely has finished.
        due = time.time() + 3 + burst / max(pending / took, 1.0) * 1.5
        receiver.expected = burst
        near = [{"at": due, "callback": callback, "payload": {"n": n}} for n in range(burst)]
        answers, _ = await register(bouncer.url, near)
        if time.time() > due:
            raise RuntimeError("registering the burst took longer than planned")
        await asyncio.wait_for(receiver.done.wait(), 120 + burst / 50)
        await asyncio.sleep(1)  # anything delivered twice would arrive now
        ids = {answer["id"] for answer in answers}
        lateness = [(receiver.arrived[i] - due) * 1000 for i in ids if i in receiver.arrived]
        last = max(receiver.arrived[i] for i in ids)
        rows.append(Row(f"callbacks ({burst:,} due at once)", f"{burst / (last - due):,.0f} /s"))
        rows.append(
            Row(
                "lateness p50 / p99 / max",
                f"{percentile(lateness, 0.5):,.0f} / {percentile(lateness, 0.99):,.0f}"
                f" / {max(lateness):,.0f} ms",
            )
        )
        with sqlite3.connect(db) as conn:
            delivered = conn.execute(
                "SELECT COUNT(*) FROM waits WHERE status = 'delivered'"
            ).fetchone()[0]
        conn.close()
        exact = (
            len(receiver.arrived) == burst
            and receiver.repeats == 0
            and receiver.bad == 0
            and delivered == burst
        )
        rows.append(
            Row(
                "delivered exactly once",
                f"{len(receiver.arrived):,}, {receiver.repeats} repeats, {delivered:,} recorded",
                f"{burst:,}, 0 repeats",
                exact,
            )
        )
    finally:
        bouncer.stop()
        server.should_exit = True
        await task
    return rows, db


async def memory(workdir: Path, loaded: Path, pending: int) -> list[Row]:
    empty_dir = workdir / "empty"
    empty_dir.mkdir()
    results: dict[str, list[tuple[float, float]]] = {"empty": [], "loaded": []}
    for _ in range(3):
        for name, db in (("empty", empty_dir / "waits.db"), ("loaded", loaded)):
            bouncer = Bouncer(workdir, db)
            try:
                startup = await bouncer.ready()
                await asyncio.sleep(1.0)  # the delivery loop's first pass
                results[name].append((bouncer.rss_mb(), startup))
            finally:
                bouncer.stop()
    empty = statistics.median(rss for rss, _ in results["empty"])
    loaded_rss = statistics.median(rss for rss, _ in results["loaded"])
    startup = statistics.median(s for _, s in results["loaded"])
    growth = loaded_rss - empty
    return [
        Row("resident memory, empty", f"{empty:,.1f} MB"),
        Row(f"resident memory, {pending:,} pending", f"{loaded_rss:,.1f} MB"),
        Row(
            "memory growth",
            f"{growth:,.1f} MB",
            f"< {MEMORY_GROWTH_TARGET_MB:g} MB",
            growth < MEMORY_GROWTH_TARGET_MB,
        ),
        Row(f"start-up, {pending:,} pending", f"{startup:.2f} s"),
        Row("database size", f"{loaded.stat().st_size / 2**20:,.1f} MB"),
    ]


async def run(pending: int, burst: int) -> int:
    with tempfile.TemporaryDirectory(prefix="ocan-bouncer-") as tmp:
        workdir = Path(tmp)
        rows, db = await load_and_burst(workdir, pending, burst)
        rows += await memory(workdir, db, pending)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    print_table(rows)
    return 0 if all(row.ok is not False for row in rows) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--pending", type=int, help="waits pending far out (default 100,000)")
    parser.add_argument("--burst", type=int, help="waits due at once (default 5,000)")
    args = parser.parse_args()
    pending = args.pending or (10_000 if args.quick else 100_000)
    burst = args.burst or (1_000 if args.quick else 5_000)
    return asyncio.run(run(pending, burst))


if __name__ == "__main__":
    sys.exit(main())
