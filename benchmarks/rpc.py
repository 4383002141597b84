"""RPC benchmark: one run, one table, against a real uvicorn server in another process.

    python benchmarks/rpc.py [--quick]

The server (``benchmarks/rpc_server.py``) runs a real ``continuation.ActorSystem`` on SQLite.
Rows (medians of sequential round trips, in microseconds):
- a trivial call (``counter.ping()``, which touches no storage) over WebSocket, next to a raw
  WebSocket echo made with the same client library (websockets, same options) against the
  same server process;
- a call that writes storage (``counter.increment()``, one committed turn) over WebSocket;
- the trivial call over HTTP, next to a raw HTTP POST made with httpx against the same server;
- a 5-call pipelined chain (``ping()`` then four ``add(previous, 1)``) over WebSocket, next
  to the same 5 calls awaited one by one;
- 100 ``increment()`` calls started in one event-loop tick, with the round trips they used,
  counted by the server.

Targets: a WebSocket call at most 1.5x the raw echo; the 5-call pipelined chain at most 1.3x
a single call; 100 concurrent calls in one round trip. Exit status 1 when one is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from rpc import HttpTransport, RpcProxy, WebSocketTransport, create_rpc_client  # noqa: E402

WS_TARGET = 1.5
PIPELINE_TARGET = 1.3
CONCURRENT_CALLS = 100


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(port: int) -> subprocess.Popen[bytes]:
    """``benchmarks/rpc_server.py`` in its own process; returns once it listens."""
    server = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "rpc_server.py"), "--port", str(port)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # polling for the socket to be up
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise SystemExit("the server did not start within 20 s")


async def medians_us(operations: list[Callable[[], Awaitable[Any]]], rounds: int) -> list[float]:
    """Median wall time of each operation in microseconds, after a warm-up.

    The operations take turns, one run each per round, so that a burst of load from
    elsewhere on the machine slows all of them alike instead of skewing one row.
    """
    for _ in range(max(20, rounds // 10)):
        for operation in operations:
            await operation()
    timings: list[list[float]] = [[] for _ in operations]
    for _ in range(rounds):
        for operation, samples in zip(operations, timings, strict=True):
            start = time.perf_counter()
            await operation()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) * 1e6 for samples in timings]


async def server_counts(http: httpx.AsyncClient, base: str) -> dict[str, int]:
    counts: dict[str, int] = (await http.get(f"{base}/raw/stats")).json()
    return counts


async def pipelined(counter: RpcProxy) -> int:
    value = counter.ping()
    for _ in range(4):
        value = counter.add(value, 1)
    result: int = await value
    return result


async def sequential(counter: RpcProxy) -> None:
    value = await counter.ping()
    for _ in range(4):
        value = await counter.add(value, 1)


async def measure(port: int, rounds: int) -> tuple[list[tuple[str, str]], bool]:
    base_http, base_ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    rows: list[tuple[str, str]] = []
    async with (
        httpx.AsyncClient() as http,
        connect(f"{base_ws}/raw/ws", compression=None) as raw_ws,
        create_rpc_client(
            "counter", "bench", transport=WebSocketTransport(f"{base_ws}/rpc")
        ) as counter,
        create_rpc_client(
            "counter", "bench", transport=HttpTransport(f"{base_http}/rpc")
        ) as http_counter,
    ):
        frame = '{"type":"call","id":1,"binding":"counter","instance":"bench","batch":{}}'

        async def echo() -> None:
            await raw_ws.send(frame)
            await raw_ws.recv()

        async def post() -> None:
            await http.post(f"{base_http}/raw/http", content=frame)

        async def call() -> None:
            await counter.ping()

        async def writing_call() -> None:
            await counter.increment()

        async def http_call() -> None:
            await http_counter.ping()

        ws_call, ws_echo, chain5 = await medians_us(
            [call, echo, lambda: pipelined(counter)], rounds
        )
        (ws_write,) = await medians_us([writing_call], rounds // 10)
        http_rpc, http_raw = await medians_us([http_call, post], rounds // 4)
        (seq5,) = await medians_us([lambda: sequential(counter)], rounds // 10)

        before = await server_counts(http, base_http)
        start = time.perf_counter()
        results = await asyncio.gather(*[counter.increment() for _ in range(CONCURRENT_CALLS)])
        concurrent_us = (time.perf_counter() - start) * 1e6
        after = await server_counts(http, base_http)
        round_trips = after["frames"] - before["frames"]
        assert len(set(results)) == CONCURRENT_CALLS

    ws_ratio, pipeline_ratio = ws_call / ws_echo, chain5 / ws_call
    rows = [
        ("WebSocket call, counter.ping()", f"{ws_call:.0f}"),
        ("  raw WebSocket echo (websockets)", f"{ws_echo:.0f}"),
        ("WebSocket call writing storage, counter.increment()", f"{ws_write:.0f}"),
        ("HTTP call, counter.ping()", f"{http_rpc:.0f}"),
        ("  raw HTTP POST (httpx)", f"{http_raw:.0f}"),
        ("5-call pipelined chain (WebSocket)", f"{chain5:.0f}"),
        ("  the same 5 calls awaited one by one", f"{seq5:.0f}"),
        (
            f"{CONCURRENT_CALLS} concurrent increment() in one tick (WebSocket)",
            f"{concurrent_us:.0f}",
        ),
        ("  round trips they used (counted by the server)", f"{round_trips}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'benchmark':<{width}}  {'median us':>10}")
    print(f"{'-' * width}  {'-' * 10}")
    for name, value in rows:
        print(f"{name:<{width}}  {value:>10}")
    print()
    print(f"WebSocket call / raw echo: {ws_ratio:.2f}x (target <= {WS_TARGET}x)")
    print(f"HTTP call / raw POST: {http_rpc / http_raw:.2f}x (no target)")
    print(
        f"5-call pipelined chain / one call: {pipeline_ratio:.2f}x (target <= {PIPELINE_TARGET}x)"
    )
    print(f"{CONCURRENT_CALLS} concurrent calls: {round_trips} round trip(s) (target 1)")
    met = ws_ratio <= WS_TARGET and pipeline_ratio <= PIPELINE_TARGET and round_trips == 1
    return rows, met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args()
    rounds = 200 if args.quick else 2000
    port = free_port()
    server = start_server(port)
    try:
        _, met = asyncio.run(measure(port, rounds))
    finally:
        server.terminate()
        server.wait(10)
    print("targets met" if met else "TARGETS MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
