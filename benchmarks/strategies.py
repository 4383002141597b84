"""Strategy benchmarks: durable proxy-fetches against plain httpx, and same-system remote calls.

    python benchmarks/strategies.py [--quick] [--repeat 3] [--only fetch remote-call]

Rows:
- fetch: 2,000 GETs to a local uvicorn server (``fetch_peer.fetch_server()``, a child
  process answering a small JSON body), at concurrency 50, made three ways in the same run,
  the peers taking turns after a warm-up, best of ``--repeat`` rounds each:
  ``httpx direct`` (one pooled ``httpx.AsyncClient`` and a semaphore; the floor),
  ``FetchDispatcher`` (the proxy-fetch executor alone: validation, deadline, streamed size
  check) and ``ActorSystem proxy-fetch``: ``continue_(..., strategy="proxy-fetch")`` from
  actor turns (100 per turn, on 20 actors) on a fresh SQLite file with
  ``durability="full"``, the real clock and ``fetch_concurrency=50``; each handler writes
  one storage key. Timed from the first scheduling call until every handler has run and
  no continuation is pending (every handler's turn durable), then checked by counting
  completed rows and storage keys. The durability overhead per fetch is the system's time
  per fetch minus the direct one's (and, split out, minus the ``FetchDispatcher``'s).
- remote-call: 10,000 same-system remote calls (``strategy="remote-call"``) scheduled from
  turns of 20 caller actors (100 per turn) to 100 target actors; each call's target turn
  writes one storage key (committed with the caller's stored result), and each caller
  handler writes one. ``durability="full"`` on a fresh file, the real clock. Timed from the
  first scheduling call until every caller handler has run and none is pending; checked by
  counting completed rows and both sets of keys. Best of ``--repeat`` runs, each after a
  full garbage collection, so that one run's leftovers are not the next one's work. Beside
  it, the least event-loop CPU per call over the runs, and for the fastest run how busy
  its event loop was (its CPU over the run's time: below 100%, the loop waited for
  commits) and the CPU per call of the other threads (the SQLite writer and readers).

Target: >= 10,000 remote calls/s end to end. The fetch rows have none (the server and the
client share the machine; see the overhead column). Exits 1 if the target is missed.
``--quick`` runs 200 fetches and 1,000 calls once, for a smoke run (targets not held).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from continuations import Row, count, fresh_database, print_table
from fetch_peer import BODY, dispatcher, fetch_server, httpx_direct

from continuation import Actor, ActorSystem, Continuation, FetchRequest, FetchResponse

REMOTE_CALL_TARGET = 10_000.0
PER_TURN = 100
CALLERS = 20
TARGETS = 100
FETCH_ACTORS = 20

TimedPeer = Callable[[str, int, int], Awaitable[float]]
"""Makes ``fetches`` GETs to ``url``, ``concurrency`` at a time; returns the seconds it took."""


# -- the actors --------------------------------------------------------------------------


class Fetcher(Actor):
    """Schedules proxy-fetches in turns; each handler writes one storage key."""

    fired = 0  # handler runs in this process: when to start polling the store

    def schedule(self, url: str, first: int, count: int) -> None:
        c = Continuation(self)
        request = FetchRequest(url=url)
        for number in range(first, first + count):
            self.continue_(c.fetched(number, c.result), strategy="proxy-fetch", request=request)

    def fetched(self, number: int, response: FetchResponse) -> None:
        if response.body != BODY:
            raise AssertionError(f"unexpected body {response.body!r}")
        self.storage.put(f"f{number}", response.status)
        Fetcher.fired += 1


class Ledger(Actor):
    """The target of remote calls: each call writes one storage key."""

    def record(self, number: int) -> int:
        self.storage.put(f"r{number}", number)
        return number * 2


class Caller(Actor):
    """Schedules remote calls in turns; each handler writes one storage key."""

    fired = 0

    def schedule(self, first: int, count: int, targets: int) -> None:
        c = Continuation(self)
        ledger = Continuation(Ledger)
        for number in range(first, first + count):
            self.continue_(
                c.recorded(number, c.result),
                strategy="remote-call",
                binding="Ledger",
                instance=f"t{number % targets}",
                call=ledger.record(number),
            )

    def recorded(self, number: int, doubled: int) -> None:
        self.storage.put(f"c{number}", doubled)
        Caller.fired += 1


# -- helpers -----------------------------------------------------------------------------


async def wait_until_none_pending(system: ActorSystem, ready: Callable[[], bool]) -> None:
    """Return once no continuation is pending: every handler's turn has committed. The
    store is polled only once the handlers have all run in memory, so polling does not
    compete with the work being measured."""
    while not ready():
        await asyncio.sleep(0.002)
    while await system.continuations(status="pending", limit=1):
        await asyncio.sleep(0.001)


def check_counts(path: str, label: str, total: int, *prefixes: str) -> None:
    completed = count(path, "SELECT COUNT(*) FROM continuations WHERE status = 'completed'")
    keys = [
        count(path, "SELECT COUNT(*) FROM actor_state WHERE key LIKE ?", f"{prefix}%")
        for prefix in prefixes
    ]
    if completed != total or any(k != total for k in keys):
        raise SystemExit(f"{label}: {completed} completed and {keys} keys, not {total} each")


def in_batches(total: int, per_turn: int) -> list[tuple[int, int]]:
    return [(first, min(per_turn, total - first)) for first in range(0, total, per_turn)]


# -- proxy-fetch -------------------------------------------------------------------------


def timed(peer: Callable[[str, int, int], Awaitable[None]]) -> TimedPeer:
    """A ``fetch_peer`` peer timed around its whole call."""

    async def run(url: str, fetches: int, concurrency: int) -> float:
        start = time.perf_counter()
        await peer(url, fetches, concurrency)
        return time.perf_counter() - start

    return run


async def system_fetches(url: str, fetches: int, concurrency: int) -> float:
    """Durable proxy-fetches on a fresh file, timed from the first schedule to the last
    durable handler; opening and closing the system are outside the time."""
    Fetcher.fired = 0
    with fresh_database("fetch.db") as path:
        system = ActorSystem(
            path, actors=[Fetcher], durability="full", fetch_concurrency=concurrency
        )
        async with system:
            calls = [
                system.get(Fetcher, f"a{n % FETCH_ACTORS}").schedule(url, first, size)
                for n, (first, size) in enumerate(in_batches(fetches, PER_TURN))
            ]
            start = time.perf_counter()
            await asyncio.gather(*calls)
            await wait_until_none_pending(system, lambda: Fetcher.fired >= fetches)
            elapsed = time.perf_counter() - start
        check_counts(path, "proxy-fetch", fetches, "f")
    return elapsed


FETCH_PEERS: dict[str, TimedPeer] = {
    "httpx direct": timed(httpx_direct),
    "FetchDispatcher": timed(dispatcher),
    "ActorSystem proxy-fetch": system_fetches,
}


async def best_rounds(url: str, fetches: int, concurrency: int, repeat: int) -> dict[str, float]:
    """Each peer's best time over ``repeat`` rounds, the peers taking turns after a warm-up
    that opens connection pools and warms the server."""
    for peer in FETCH_PEERS.values():
        await peer(url, concurrency * 2, concurrency)
    best = dict.fromkeys(FETCH_PEERS, float("inf"))
    for _ in range(repeat):
        for name, peer in FETCH_PEERS.items():
            best[name] = min(best[name], await peer(url, fetches, concurrency))
    return best


def fetch_rows(quick: bool, repeat: int) -> list[Row]:
    fetches, concurrency = (200 if quick else 2_000), 50
    with fetch_server() as url:
        best = asyncio.run(best_rounds(url, fetches, concurrency, repeat))
    floor = best["httpx direct"] / fetches * 1e6
    executor = best["FetchDispatcher"] / fetches * 1e6
    rows = []
    for name, seconds in best.items():
        per_fetch = seconds / fetches * 1e6
        extra = "" if name == "httpx direct" else f", {per_fetch - floor:+,.0f} us/fetch"
        rows.append(
            Row(
                f"{fetches:,} fetches at concurrency {concurrency}: {name}",
                f"{fetches / seconds:,.0f} /s ({per_fetch:,.0f} us/fetch{extra})",
            )
        )
    durable = best["ActorSystem proxy-fetch"] / fetches * 1e6
    rows.append(
        Row(
            "durability overhead per fetch (system - FetchDispatcher)",
            f"{durable - executor:,.0f} us",
        )
    )
    return rows


# -- remote calls ------------------------------------------------------------------------


async def system_remote_calls(path: str, total: int) -> tuple[float, float, float]:
    """Remote calls per second, first schedule to the last durable caller handler, and the
    CPU seconds per call over the same span of the event loop's thread and of the others
    (the SQLite writer and reader threads)."""
    Caller.fired = 0
    targets = min(TARGETS, total)
    async with ActorSystem(path, actors=[Caller, Ledger], durability="full") as system:
        calls = [
            system.get(Caller, f"c{n % CALLERS}").schedule(first, size, targets)
            for n, (first, size) in enumerate(in_batches(total, PER_TURN))
        ]
        start, loop, process = time.perf_counter(), time.thread_time(), time.process_time()
        await asyncio.gather(*calls)
        await wait_until_none_pending(system, lambda: Caller.fired >= total)
        elapsed = time.perf_counter() - start
        loop, process = time.thread_time() - loop, time.process_time() - process
    check_counts(path, "remote-call", total, "r", "c")
    return total / elapsed, loop / total, (process - loop) / total


def remote_call_rows(quick: bool, repeat: int) -> list[Row]:
    total = 1_000 if quick else 10_000
    runs = []
    for _ in range(repeat):
        gc.collect()  # the last round's garbage is not this one's collection work
        with fresh_database("remote.db") as path:
            runs.append(asyncio.run(system_remote_calls(path, total)))
    rate, loop_cpu, other_cpu = max(runs)
    return [
        Row(
            f"remote calls, {total:,}, {CALLERS} callers -> {min(TARGETS, total)} targets,"
            " durability=full",
            f"{rate:,.0f} /s",
            f">= {REMOTE_CALL_TARGET:,.0f} /s",
            rate >= REMOTE_CALL_TARGET,
        ),
        Row("event-loop CPU per remote call (least)", f"{min(r[1] for r in runs) * 1e6:.0f} µs"),
        Row("  in the fastest run: event loop busy", f"{loop_cpu * rate:.0%}"),
        Row("  in the fastest run: other threads' CPU per call", f"{other_cpu * 1e6:.0f} µs"),
    ]


# -- main --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, targets not held")
    parser.add_argument("--only", nargs="+", choices=["fetch", "remote-call"], default=None)
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of each; the best counts (default 3)"
    )
    args = parser.parse_args()
    parts = args.only or ["fetch", "remote-call"]
    repeat = 1 if args.quick else args.repeat
    rows: list[Row] = []
    if "fetch" in parts:
        rows += fetch_rows(args.quick, repeat)
    if "remote-call" in parts:
        rows += remote_call_rows(args.quick, repeat)
    print_table(rows)
    missed = [row.name for row in rows if row.ok is False]
    print()
    if args.quick:
        print("quick run: sizes are reduced, targets are not held")
        return 0
    print("targets met" if not missed else f"TARGETS MISSED: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
