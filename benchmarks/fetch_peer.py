"""Proxy-fetch peers: the same fetches through ``FetchDispatcher`` and directly with httpx.

    python benchmarks/fetch_peer.py [--fetches 2000] [--concurrency 50] [--repeat 3] [--quick]

A uvicorn server in a child process (this file with ``--serve PORT``) answers ``GET /rate``
with a small JSON body. Each peer makes ``--fetches`` GETs to it, ``--concurrency`` at a time,
each with its own ``Idempotency-Key``, and reads every body:

- ``httpx direct``: one ``httpx.AsyncClient`` with a pool of ``concurrency`` connections and
  an ``asyncio.Semaphore(concurrency)``; the floor.
- ``FetchDispatcher``: ``FetchDispatcher(concurrency=...)`` with its own client (same pool
  size), ``fetch(..., timeout=30, retry=RetryPolicy())``; adds validation, the deadline, the
  streamed size check and the ``FetchResponse`` record.

The peers take turns, ``--repeat`` rounds after a warm-up that opens the pool, and the table
shows the best round of each (the least disturbed by other load on the machine). There is no
target; ``benchmarks/strategies.py`` reuses ``run_peers`` and adds the durable end-to-end
column (``continue_(..., strategy="proxy-fetch")`` to the handler firing).

Import ``fetch_server``, ``run_peers``, ``print_table`` and ``PEERS`` to add peers:
a peer is ``async (url, fetches, concurrency) -> None``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from continuation import RetryPolicy  # noqa: E402
from continuation._fetch import FetchDispatcher, FetchRequest  # noqa: E402

Peer = Callable[[str, int, int], Awaitable[None]]
"""Makes ``fetches`` GETs to ``url``, ``concurrency`` at a time, reading every body."""

BODY = b'{"base":"EUR","rates":{"USD":1.08,"GBP":0.85,"JPY":163.2}}'


async def rate_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A raw ASGI app answering every request with ``BODY``: the least server work, so the
    difference between peers is the client's."""
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def serve(port: int) -> None:
    """Run the server in this process until it is terminated."""
    import uvicorn

    uvicorn.run(
        rate_app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", access_log=False
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def fetch_server() -> Iterator[str]:
    """The rate server in a child process; yields its ``/rate`` URL, stops it on exit."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # polling for the socket to be up
            if server.poll() is not None:
                raise SystemExit(f"the server exited with status {server.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start within 20 s") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/rate"
    finally:
        server.terminate()
        server.wait(10)


async def httpx_direct(url: str, fetches: int, concurrency: int) -> None:
    """The floor: plain httpx, same pool size, same bound, same header."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one(n: int) -> None:
            async with slots:
                response = await client.get(url, headers={"Idempotency-Key": f"direct-{n}"})
                assert response.status_code == 200
                assert response.content == BODY

        await asyncio.gather(*(one(n) for n in range(fetches)))


async def dispatcher(url: str, fetches: int, concurrency: int) -> None:
    """The same fetches through ``FetchDispatcher``."""
    request = FetchRequest(url=url)
    retry = RetryPolicy()
    async with FetchDispatcher(concurrency=concurrency) as fetcher:

        async def one(n: int) -> None:
            response = await fetcher.fetch(
                request, idempotency_key=f"dispatch-{n}", timeout=30, retry=retry
            )
            assert response.status == 200
            assert response.body == BODY

        await asyncio.gather(*(one(n) for n in range(fetches)))


PEERS: dict[str, Peer] = {"httpx direct": httpx_direct, "FetchDispatcher": dispatcher}


@dataclass(frozen=True)
class Row:
    """One peer's best round."""

    peer: str
    seconds: float
    fetches: int

    @property
    def per_second(self) -> float:
        return self.fetches / self.seconds

    @property
    def us_per_fetch(self) -> float:
        return self.seconds / self.fetches * 1e6


async def run_peers(
    url: str, fetches: int, concurrency: int, *, repeat: int = 3, peers: dict[str, Peer] = PEERS
) -> list[Row]:
    """Each peer's best of ``repeat`` rounds, the peers taking turns after a warm-up."""
    for peer in peers.values():
        await peer(url, concurrency * 2, concurrency)
    best = dict.fromkeys(peers, float("inf"))
    for _ in range(repeat):
        for name, peer in peers.items():
            start = time.perf_counter()
            await peer(url, fetches, concurrency)
            best[name] = min(best[name], time.perf_counter() - start)
    return [Row(name, seconds, fetches) for name, seconds in best.items()]


def print_table(rows: list[Row], concurrency: int) -> None:
    """The rows, with each one's cost per fetch over the first (the floor)."""
    floor = rows[0]
    width = max(len(row.peer) for row in rows)
    print(f"{rows[0].fetches} fetches at concurrency {concurrency}, best round of each")
    head = (
        f"{'peer':<{width}}  {'total s':>8}  {'fetches/s':>10}  {'us/fetch':>9}  {'+us/fetch':>9}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        extra = row.us_per_fetch - floor.us_per_fetch
        print(
            f"{row.peer:<{width}}  {row.seconds:>8.3f}  {row.per_second:>10.0f}"
            f"  {row.us_per_fetch:>9.0f}  {extra:>+9.0f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetches", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200 fetches, one round")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    fetches, repeat = (200, 1) if args.quick else (args.fetches, args.repeat)
    with fetch_server() as url:
        rows = asyncio.run(run_peers(url, fetches, args.concurrency, repeat=repeat))
    print_table(rows, args.concurrency)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
