"""Scale benchmarks: throughput with 1, 2 and 3 hosts on one PostgreSQL server, and fail-over.

    python benchmarks/scale.py [--quick] [--only throughput failover] [--lease-ttl 10]

Every host is a real process (``python -m continuation serve benchmarks/scale_app.py:...``),
and each PostgreSQL measurement runs in a fresh schema (``bench_<random>``, dropped after).
The server is read from ``OCAN_BENCH_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``); if it cannot be reached the benchmark says so
and exits 2.

Rows:
- throughput: 20,000 continuations on 60 ``Sink`` actors, scheduled through RPC calls (100
  per turn) spread over the hosts (actor ``i`` through host ``i mod hosts``, which takes
  its lease), all due at one instant ahead (``--lead``, by default 3 s plus 1 s per 4,000
  continuations), so scheduling is not timed. Each
  handler adds one to its own storage key. Timed from the due instant until the database
  has no pending continuation (polled every 10 ms), then checked: as many completed rows
  and storage keys as continuations, and no key written twice (each actor counts its own
  over RPC). With 1, 2 and 3 PostgreSQL hosts, and one served host on an SQLite file
  (``durability="full"`` everywhere), the speed-up given over one PostgreSQL host. Best of
  ``--repeat`` runs each (default 3), the configurations taking turns. Beside each figure:
  the CPUs the hosts kept busy meanwhile (their CPU time over the time taken, from
  ``/proc``), the CPUs busy on the whole machine (PostgreSQL and any other work included),
  and how many lines the hosts logged (a failed scheduler pass waits a second).
- fail-over: two hosts A and B; ten ``Ticker`` actors activated through A, each running a
  chain of alarms 50 ms apart, every tick recording the host that fired it and when. After
  a warm-up A is SIGKILLed at t0; the fail-over time is the first tick fired by B minus t0,
  shown with the time A's leases still had to run at t0 (read from the database after the
  kill) and how long after that expiry B fired. Run with ``--lease-ttl`` (default 10 s) and
  with 2 s. Checked: no tick fired twice or lost (each tick carries its number), every
  actor has one live continuation, and every actor moved to B.

No targets: the numbers are reported. Exits 1 if a check fails (an effect lost or applied
twice, or a run that did not finish). ``--quick`` runs 2,000 continuations once and only the
2 s fail-over, for a smoke run. ``--logs DIR`` keeps the hosts' output (one file per run and
host); what they logged beyond their start and stop is summed up under the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from continuations import Row, count, fresh_database, print_table

from rpc import HttpTransport, create_rpc_client

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
APP = Path(__file__).with_name("scale_app.py")
PER_TURN = 100
SINKS = 60
POLL = 0.01  # seconds between two counts of the pending rows
CALL_TIMEOUT = 120.0
TICKERS = 10
PERIOD = 0.05  # seconds between two ticks of one chain
WARMUP = 2.0  # seconds the chains run on A before it is killed
SHORT_TTL = 2.0

PENDING = "SELECT count(*) FROM continuations WHERE status = 'pending'"
COMPLETED = "SELECT count(*) FROM continuations WHERE status = 'completed'"
SINK_KEYS = "SELECT count(*) FROM actor_state WHERE binding = 'Sink' AND key LIKE 'n%'"
DB_NOW = "extract(epoch from clock_timestamp())"  # the clock leases are kept on
HELD_BY_A = f"SELECT count(*) FROM leases WHERE host = 'a' AND {DB_NOW} < expires_at"
A_EXPIRES = "SELECT min(expires_at) FROM leases WHERE host = 'a' AND expires_at > 0"

Problems = Counter[tuple[str, str]]
"""What the hosts logged (exceptions, warnings), by run and host, and line."""


class BenchError(Exception):
    """A run that could not finish: a host that did not start, or work that never ended."""


# -- databases ---------------------------------------------------------------------------


class Database(Protocol):
    """Where the hosts keep their state (``url`` is their ``--db``), and a way to count it."""

    url: str

    async def count(self, sql: str) -> int: ...


@dataclass
class SqliteDatabase:
    url: str

    async def count(self, sql: str) -> int:
        return count(self.url, sql)  # WAL: a reader never waits for the hosts' commits


@dataclass
class PostgresDatabase:
    url: str
    connection: asyncpg.Connection

    async def count(self, sql: str) -> int:
        return int(await self.connection.fetchval(sql))


def with_search_path(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "search_path"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("search_path", schema)])))


@contextlib.asynccontextmanager
async def fresh_schema(server: str) -> AsyncIterator[PostgresDatabase]:
    """A new, empty schema on ``server``, dropped with everything in it afterwards."""
    schema = f"bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        try:
            url = with_search_path(server, schema)
            connection = await asyncpg.connect(url)
            try:
                yield PostgresDatabase(url, connection)
            finally:
                await connection.close()
        finally:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def sqlite_file() -> AsyncIterator[SqliteDatabase]:
    with fresh_database("scale.db") as path:
        yield SqliteDatabase(path)


async def reachable(server: str) -> str | None:
    """Why ``server`` cannot be used, or ``None`` if it can."""
    try:
        connection = await asyncpg.connect(server, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await connection.close()
    return None


# -- hosts -------------------------------------------------------------------------------


def machine_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy (not idle or waiting), from ``/proc/stat``."""
    try:
        user, nice, system, _idle, _iowait, *rest = Path("/proc/stat").read_text().split()[1:9]
    except (OSError, ValueError):
        return float("nan")
    ticks = sum(int(n) for n in (user, nice, system, *rest))
    return ticks / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Host:
    """One ``python -m continuation serve`` process, its output in a log file."""

    def __init__(self, name: str, database: str, *, lease_ttl: float, log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log = log
        command = [
            sys.executable, "-m", "continuation", "serve", f"{APP}:create_system",
            "--db", database, "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SCALE_HOST_ID": name,
            "SCALE_LEASE_TTL": str(lease_ttl),
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/rpc"

    async def ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"host {self.name} exited:\n{self.tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise BenchError(f"host {self.name} never listened:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        """The CPU time the process has used (user and system), from ``/proc``."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")  # not Linux, or the process is gone
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def problems(self) -> Counter[str]:
        """The exceptions (last line of each traceback) and warnings the host logged."""
        found: Counter[str] = Counter()
        in_traceback = False
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("Traceback"):
                in_traceback = True
            elif not line or line[0].isspace() or line.startswith(_NOT_A_PROBLEM):
                continue
            elif not in_traceback or not line.startswith(_CHAINED):
                found[line[:160]] += 1
                in_traceback = False
        return found


# What a host prints when all is well, and the lines of a logged exception that follow its
# first line (PostgreSQL's DETAIL and HINT, a deadlock's second process) or chain two.
_NOT_A_PROBLEM = (
    *("serving <ActorSystem", "closed the actor system", "INFO:"),
    *("DETAIL:", "HINT:", "Process "),
)
_CHAINED = ("During handling", "The above exception")


def stop_all(hosts: Sequence[Host], timeout: float = 15.0) -> None:
    """SIGTERM every host still running (each closes its system), SIGKILL the slow ones."""
    for host in hosts:
        if host.process.poll() is None:
            host.process.terminate()
    deadline = time.monotonic() + timeout
    for host in hosts:
        try:
            host.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            host.kill()


@dataclass
class Harness:
    """Starts hosts, their output in log files under ``logs``; keeps what they logged that
    was unexpected (exceptions, warnings), by run and host, in ``seen``."""

    logs: Path
    seen: Problems = field(default_factory=Counter)

    @contextlib.asynccontextmanager
    async def hosts(
        self, run: str, names: Sequence[str], database: str, *, lease_ttl: float
    ) -> AsyncIterator[list[Host]]:
        """Hosts ``names`` started on ``database`` and listening; stopped (killed if need be)
        afterwards."""
        hosts: list[Host] = []
        try:
            for name in names:
                log = self.logs / f"{run}-{name}.log"
                hosts.append(Host(name, database, lease_ttl=lease_ttl, log=log))
            for host in hosts:
                await host.ready()
            yield hosts
        finally:
            stop_all(hosts)
            for host in hosts:
                self.seen.update((f"{run} {host.name}", p) for p in host.problems().elements())

    def logged(self, run: str) -> int:
        """How many problems the hosts of ``run`` logged."""
        return sum(n for (where, _), n in self.seen.items() if where.startswith(f"{run} "))


@contextlib.asynccontextmanager
async def proxies(
    hosts: Sequence[Host], binding: str, instances: Sequence[str]
) -> AsyncIterator[list[Any]]:
    """An RPC proxy per actor, actor ``i`` reached through host ``i mod len(hosts)``."""
    transports = [HttpTransport(host.url) for host in hosts[: len(instances)]]
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            create_rpc_client(
                binding, instance, transport=transports[n % len(transports)], timeout=CALL_TIMEOUT
            )
            for n, instance in enumerate(instances)
        ]
        yield [await stack.enter_async_context(client) for client in clients]


# -- throughput --------------------------------------------------------------------------


@dataclass
class Throughput:
    rate: float
    seconds: float
    lost: int  # continuations not completed, or keys never written
    doubled: int  # keys written more than once
    split: str  # actors per host
    scheduling: float  # seconds the RPC calls scheduling the work took (not timed)
    busy: float  # CPUs the hosts kept busy meanwhile: their CPU time / the time taken
    machine: float  # CPUs busy on the whole machine (hosts, PostgreSQL, anything else)
    logged: int  # exceptions and warnings the hosts logged


async def run_throughput(
    harness: Harness, run: str, database: Database, hosts: int, total: int, lead: float
) -> Throughput:
    """Schedule ``total`` continuations due at one instant over ``hosts`` hosts; time them."""
    names = [f"h{n + 1}" for n in range(hosts)]
    async with harness.hosts(run, names, database.url, lease_ttl=10.0) as up:
        instances = [f"s{n}" for n in range(SINKS)]
        async with proxies(up, "Sink", instances) as sinks:
            await asyncio.gather(*(sink.tally() for sink in sinks))  # activated: leases taken
            started = time.time()
            due = started + lead
            batches = [(f, min(PER_TURN, total - f)) for f in range(0, total, PER_TURN)]
            await asyncio.gather(
                *(sinks[n % SINKS].schedule(f, c, due) for n, (f, c) in enumerate(batches))
            )
            scheduling = time.time() - started
            if time.time() >= due:
                raise BenchError(f"scheduling took longer than the lead ({lead} s): use --lead")
            await asyncio.sleep(max(0.0, due - time.time()))
            cpu, machine = sum(host.cpu_seconds() for host in up), machine_cpu_seconds()
            seconds = await until_none_pending(database, due, timeout=300.0)
            cpu = sum(host.cpu_seconds() for host in up) - cpu
            machine = machine_cpu_seconds() - machine
            tallies = await asyncio.gather(*(sink.tally() for sink in sinks))
        split = await actors_per_host(database)
    completed = await database.count(COMPLETED)
    keys = await database.count(SINK_KEYS)
    doubled = sum(t["repeated"] for t in tallies)
    lost = max(total - completed, total - keys, total - sum(t["keys"] for t in tallies))
    logged = harness.logged(run)
    return Throughput(
        total / seconds, seconds, lost, doubled, split, scheduling, cpu / seconds,
        machine / seconds, logged,
    )  # fmt: skip


async def until_none_pending(database: Database, due: float, *, timeout: float) -> float:
    """Seconds from ``due`` until no continuation is pending (``inf`` after ``timeout``)."""
    while await database.count(PENDING):
        if time.time() > due + timeout:
            return float("inf")
        await asyncio.sleep(POLL)
    return time.time() - due


async def actors_per_host(database: Database) -> str:
    if not isinstance(database, PostgresDatabase):
        return "all on one"
    rows = await database.connection.fetch(
        "SELECT host, count(*) FROM leases WHERE binding = 'Sink' GROUP BY host ORDER BY host"
    )
    return " + ".join(str(row[1]) for row in rows)


async def throughput(
    harness: Harness, server: str, total: int, lead: float, repeat: int
) -> list[Row]:
    configurations: list[tuple[str, int]] = [("SQLite", 1), ("PostgreSQL", 1)]
    configurations += [("PostgreSQL", 2), ("PostgreSQL", 3)]
    best: dict[tuple[str, int], Throughput] = {}
    lost = doubled = 0
    for round_ in range(1, repeat + 1):
        for kind, hosts in configurations:
            run = f"{kind.lower()}-{hosts}-{round_}"
            fresh = sqlite_file() if kind == "SQLite" else fresh_schema(server)
            async with fresh as database:
                result = await run_throughput(harness, run, database, hosts, total, lead)
            print(
                f"{run}: scheduled in {result.scheduling:.1f} s, all fired and committed"
                f" {result.seconds:.2f} s after the due instant",
                file=sys.stderr,
            )
            lost, doubled = lost + result.lost, doubled + result.doubled
            if (kind, hosts) not in best or result.rate > best[kind, hosts].rate:
                best[kind, hosts] = result
    one = best["PostgreSQL", 1].rate
    rows = []
    for (kind, hosts), result in best.items():
        label = f"throughput, {total:,}, {kind}, {hosts} host{'s' if hosts > 1 else ''}"
        over = f"x{result.rate / one:.2f} of 1 PostgreSQL host"
        notes = f"{over}; {result.seconds:.2f} s; CPUs busy: hosts {result.busy:.2f},"
        notes += f" all {result.machine:.2f}"
        notes += f"; actors {result.split}"
        if result.logged:
            notes += f"; hosts logged {result.logged} lines (below)"
        rows.append(Row(label, f"{result.rate:,.0f} /s", notes))
    runs = len(configurations) * repeat
    rows.append(
        Row(
            "throughput: each effect exactly once",
            f"{lost} lost, {doubled} doubled",
            f"{runs} runs x {total:,}",
            lost == 0 and doubled == 0,
        )
    )
    return rows


# -- fail-over ---------------------------------------------------------------------------


@dataclass
class FailOver:
    first: float  # kill to the first tick fired by B
    last: float  # kill to the last actor's first tick on B
    lease_left: float  # the earliest of A's leases still had this long to run at the kill
    ticks: tuple[int, int]  # fired by A, by B
    problems: list[str]  # failed checks


async def run_failover(harness: Harness, server: str, ttl: float) -> FailOver:
    async with (
        fresh_schema(server) as db,
        harness.hosts(f"failover-{ttl:g}s", ["a", "b"], db.url, lease_ttl=ttl) as (a, b),
    ):
        instances = [f"t{n}" for n in range(TICKERS)]
        async with proxies([a], "Ticker", instances) as tickers:
            started_on = await asyncio.gather(*(ticker.start(PERIOD) for ticker in tickers))
        await asyncio.sleep(WARMUP)
        problems = [] if set(started_on) == {"a"} else [f"started on {set(started_on)}"]
        held = await db.count(HELD_BY_A)
        if held != TICKERS:
            problems.append(f"A held {held} of the {TICKERS} leases before the kill")
        t0 = time.time()
        a.kill()
        expiry = await db.connection.fetchval(A_EXPIRES)  # A renews no more
        reports = await reports_from(b, db, instances, deadline=t0 + 3 * ttl + 30)
        live = await db.connection.fetch(
            "SELECT instance, count(*) FROM continuations"
            " WHERE status IN ('pending', 'running') GROUP BY instance"
        )
    firsts = [r["first"]["b"] for r in reports if "b" in r["first"]]
    problems += check_ticks(reports, firsts, t0, {row[0]: row[1] for row in live})
    ticks = tuple(sum(r["ticks"].get(h, 0) for r in reports) for h in "ab")
    first, last = (min(firsts) - t0, max(firsts) - t0) if firsts else (float("inf"),) * 2
    lease_left = float("nan") if expiry is None else float(expiry) - t0
    return FailOver(first, last, lease_left, (ticks[0], ticks[1]), problems)


async def reports_from(
    host: Host, db: PostgresDatabase, instances: Sequence[str], *, deadline: float
) -> list[Any]:
    """Each ticker's report from ``host``, once all have ticked there (or at ``deadline``).

    Asked only once the host holds every ticker's lease (taken by its scheduler claiming
    their due ticks), so that the question itself, a call on the host, does not take an
    actor over before its continuations do."""
    held = f"SELECT count(*) FROM leases WHERE host = '{host.name}' AND {DB_NOW} < expires_at"
    while await db.count(held) < len(instances) and time.time() < deadline:
        await asyncio.sleep(0.05)
    async with proxies([host], "Ticker", instances) as tickers:
        while True:
            reports = await asyncio.gather(*(ticker.report() for ticker in tickers))
            if all(host.name in r["first"] for r in reports) or time.time() > deadline:
                return reports
            await asyncio.sleep(0.2)


def check_ticks(
    reports: Sequence[Any], firsts: Sequence[float], t0: float, live: dict[str, int]
) -> list[str]:
    problems = []
    if len(firsts) != len(reports):
        problems.append(f"{len(reports) - len(firsts)} actors never ticked on B")
    if any(first < t0 for first in firsts):
        problems.append("B ticked before A was killed")
    if out_of_order := sum(r["out_of_order"] for r in reports):
        problems.append(f"{out_of_order} ticks doubled or lost")
    if any(n != 1 for n in live.values()) or len(live) != len(reports):
        problems.append(f"live continuations per actor: {live}")
    return problems


async def failover(harness: Harness, server: str, ttls: Sequence[float]) -> list[Row]:
    rows = []
    for ttl in ttls:
        result = await run_failover(harness, server, ttl)
        print(f"fail-over with lease_ttl={ttl:g} s: {result.first:.2f} s", file=sys.stderr)
        woke = (result.first - result.lease_left) * 1000
        label = f"fail-over, lease_ttl={ttl:g} s"
        rows += [
            Row(
                f"{label}: kill to first tick on B",
                f"{result.first:.2f} s",
                f"A's leases had {result.lease_left:.2f} s left; B fired {woke:.0f} ms later",
            ),
            Row(f"{label}: kill to all {TICKERS} actors on B", f"{result.last:.2f} s"),
            Row(
                f"{label}: every tick exactly once",
                f"{'; '.join(result.problems) or 'yes'}",
                f"{result.ticks[0]:,} ticks on A, {result.ticks[1]:,} on B",
                not result.problems,
            ),
        ]
    return rows


# -- main --------------------------------------------------------------------------------


@contextlib.contextmanager
def log_directory(keep: str | None) -> Iterator[Path]:
    """``keep`` (created if missing), or a temporary directory removed afterwards."""
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with fresh_database("logs") as path:
        Path(path).mkdir()
        yield Path(path)


async def run(args: argparse.Namespace, server: str, harness: Harness) -> list[Row]:
    parts = args.only or ["throughput", "failover"]
    total = args.continuations or (2_000 if args.quick else 20_000)
    lead = args.lead or (3.0 + total / 4_000)
    ttls = [SHORT_TTL] if args.quick else sorted({args.lease_ttl, SHORT_TTL}, reverse=True)
    rows: list[Row] = []
    if "throughput" in parts:
        rows += await throughput(harness, server, total, lead, 1 if args.quick else args.repeat)
    if "failover" in parts:
        rows += await failover(harness, server, ttls)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 continuations, 2 s lease")
    parser.add_argument("--only", nargs="+", choices=["throughput", "failover"], default=None)
    parser.add_argument(
        "--repeat", type=int, default=3, help="throughput runs; the best counts (default 3)"
    )
    parser.add_argument("--continuations", type=int, default=0, help="throughput workload size")
    parser.add_argument("--lead", type=float, default=0.0, help="seconds from scheduling to due")
    parser.add_argument("--lease-ttl", type=float, default=10.0, help="fail-over lease (s)")
    parser.add_argument("--logs", metavar="DIR", help="keep the hosts' output in DIR")
    args = parser.parse_args()
    # A plain SIGTERM would skip the clean-up: the hosts would outlive the benchmark.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    server = os.environ.get("OCAN_BENCH_POSTGRES", DEFAULT_POSTGRES)
    if (why := asyncio.run(reachable(server))) is not None:
        print(f"PostgreSQL at {server} cannot be reached ({why}).", file=sys.stderr)
        print("Start it, or point OCAN_BENCH_POSTGRES at one.", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    with log_directory(args.logs) as logs:
        harness = Harness(logs)
        try:
            rows = asyncio.run(run(args, server, harness))
        except BenchError as exc:
            print_problems(harness.seen)
            print(f"FAILED: {exc}")
            return 1
    print_table(rows)
    failed = [row.name for row in rows if row.ok is False]
    print()
    print(
        f"{os.cpu_count()} CPUs, shared by the hosts, PostgreSQL and this process; load average"
        f" {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    print_problems(harness.seen)
    print("all checks passed" if not failed else f"CHECKS FAILED: {', '.join(failed)}")
    return 1 if failed else 0


def print_problems(seen: Problems) -> None:
    """What the hosts logged: an error there may explain a slow run."""
    if seen:
        print("the hosts logged (run, host: count, line):")
    for (where, line), times in sorted(seen.items()):
        print(f"  {where}: {times}x {line}")


if __name__ == "__main__":
    raise SystemExit(main())
