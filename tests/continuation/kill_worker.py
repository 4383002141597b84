"""The kill test's workload: a worker process, the harness that SIGKILLs it, and the checker.

The worker (``python -m tests.continuation.kill_worker DB --actors 4 --per-actor 400``, from
the repository root) opens an ``ActorSystem`` on the real clock and, in turns of ``batch``,
schedules ``per_actor`` numbered continuations on each of ``actors`` ``Tally`` actors; it
prints ``started``, ``committed N`` as fired turns become durable, ``scheduled``, and
``done`` once nothing is pending. Each scheduling turn first looks for its batch's marker in
storage and writes it with the new continuations, so a restarted worker never schedules a
batch twice. Each handler counts its own number under a storage key of its own (``bump:N``)
and adds one to ``total``; every ``follow_every``-th also schedules a follow-up continuation
(``follow:N``) in the same turn, by each strategy in turn: an alarm; a remote call to a
``Bank`` actor, which counts the call under ``call:N`` in its own storage; a signal wait,
with the signal sent in the same turn; or a proxy-fetch from a small HTTP server the harness
runs (``--fetch-url``).

``run_campaign`` starts the worker, SIGKILLs it at a random moment (during start-up, a random
time after the system opened, or after a random number of durable firings), checks the
database, and starts it again, until it has been killed ``min_kills`` times; then it lets one
run finish. ``check_database`` reads the database directly: every effect applied exactly once
and only if its continuation completed, nothing scheduled twice, and, at the end, everything
completed.

The database is an SQLite file, or the URL of a PostgreSQL test schema (``tests/postgres.py``),
which the worker gets as its ``--db`` argument like any file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

from continuation import (
    Actor,
    ActorSystem,
    AlarmInfo,
    Continuation,
    FetchRequest,
    FetchResponse,
)
from operation_chain import Codec
from rpc._host import DownstreamMessage

ROOT = Path(__file__).resolve().parents[2]
DELAYS = (0.0, 0.0, 0.02, 0.1)  # by number: most fire at once, some wait on the real clock


# -- the workload --------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What the worker schedules: numbers ``[a * per_actor, (a + 1) * per_actor)`` on actor
    ``t{a}``, in scheduling turns of ``batch`` numbers.

    ``fire_batch`` is the system's ``batch_size``: how many due continuations fire (and
    commit) together. Kept small so that a run's durable progress grows in small steps, and
    the harness can stop each run after a bounded share of the work.
    """

    actors: int = 4
    per_actor: int = 400
    batch: int = 50
    follow_every: int = 4
    durability: Literal["full", "normal"] = "full"
    fire_batch: int = 64

    @property
    def batches(self) -> int:
        return -(-self.per_actor // self.batch)

    @property
    def continuations(self) -> int:
        """Every continuation the workload ends with, follow-ups included."""
        follow_ups = sum(
            1 for n in range(self.actors * self.per_actor) if n % self.follow_every == 0
        )
        return self.actors * self.per_actor + follow_ups

    def numbers(self, actor: int, batch: int) -> range:
        first = actor * self.per_actor + batch * self.batch
        return range(first, min(first + self.batch, (actor + 1) * self.per_actor))

    def arguments(self) -> list[str]:
        return [
            f"--actors={self.actors}",
            f"--per-actor={self.per_actor}",
            f"--batch={self.batch}",
            f"--follow-every={self.follow_every}",
            f"--durability={self.durability}",
            f"--fire-batch={self.fire_batch}",
        ]


FOLLOW_STRATEGIES = ("alarm", "remote-call", "signal", "proxy-fetch")


def follow_strategy(number: int, follow_every: int) -> str:
    return FOLLOW_STRATEGIES[(number // follow_every) % len(FOLLOW_STRATEGIES)]


class Bank(Actor):
    """The target of the remote-call follow-ups: counts each call it runs."""

    def record(self, number: int) -> int:
        key = f"call:{number}"
        self.storage.put(key, self.storage.get(key, 0) + 1)
        return number


class Tally(Actor):
    """Counts, per number, how many times its handler's effects were applied."""

    fetch_url: ClassVar[str] = ""  # the harness's HTTP server, which answers N at /N

    def schedule_batch(self, batch: int, numbers: list[int], follow_every: int) -> bool:
        marker = f"batch:{batch}"
        if self.storage.get(marker, False):
            return False  # scheduled by an earlier process, in the turn that set the marker
        c = Continuation(self)
        for number in numbers:
            self.continue_(
                c.bump(number, follow_every, c.result),
                strategy="alarm",
                delay=DELAYS[number % len(DELAYS)],
                key=f"bump:{number}",
            )
        self.storage.put(marker, True)
        return True

    def bump(self, number: int, follow_every: int, fired: AlarmInfo) -> None:
        self._count(f"bump:{number}")
        if number % follow_every == 0:
            c = Continuation(self)
            key = f"follow:{number}"
            strategy = follow_strategy(number, follow_every)
            if strategy == "alarm":
                self.continue_(c.follow(number, c.result), strategy="alarm", delay=0, key=key)
            elif strategy == "remote-call":
                bank = f"b{self.instance[1:]}"
                call = Continuation(Bank).record(number)
                self.continue_(
                    c.follow(number, c.result), strategy="remote-call", binding="Bank",
                    instance=bank, call=call, timeout=3600, key=key,
                )  # fmt: skip
            elif strategy == "signal":
                name = f"go:{number}"
                self.continue_(c.follow(number, c.result), strategy="signal", name=name, key=key)
                self.signal("Tally", self.instance, name, number)
            else:
                request = FetchRequest(url=f"{self.fetch_url}/{number}")
                self.continue_(
                    c.follow(number, c.result), strategy="proxy-fetch", request=request,
                    timeout=3600, key=key,
                )  # fmt: skip

    def follow(self, number: int, value: AlarmInfo | int | FetchResponse) -> None:
        if isinstance(value, FetchResponse):
            value = int(value.text) if value.ok else -1
        if not isinstance(value, AlarmInfo) and value != number:
            raise AssertionError(f"follow:{number} received {value!r}")
        self._count(f"follow:{number}")

    def _count(self, key: str) -> None:
        self.storage.put(key, self.storage.get(key, 0) + 1)
        self.storage.put("total", self.storage.get("total", 0) + 1)
        # Delivered only once the turn is durable: the harness's measure of progress.
        self.send_downstream("harness", 1)


async def work(database: str, workload: Workload) -> None:
    durable = 0

    def delivered(message: DownstreamMessage) -> None:
        # Printed at once, not by a task that a busy loop could hold back, so the harness
        # sees durable progress as it happens.
        nonlocal durable
        durable += 1
        print(f"committed {durable}", flush=True)

    # On PostgreSQL, a restarted worker is the same host coming back: it takes its actors'
    # leases back at once instead of waiting for the killed run's leases to expire.
    host = {"host_id": "kill-worker"} if database.startswith("postgresql://") else {}
    async with ActorSystem(
        database,
        actors=[Tally, Bank],
        durability=workload.durability,
        batch_size=workload.fire_batch,
        **host,
    ) as system:
        system.add_downstream_listener(delivered)
        print("started", flush=True)
        await asyncio.gather(
            *(
                system.get(Tally, f"t{actor}").schedule_batch(
                    batch, list(workload.numbers(actor, batch)), workload.follow_every
                )
                for batch in range(workload.batches)
                for actor in range(workload.actors)
            )
        )
        print("scheduled", flush=True)
        while await system.continuations(status="pending", limit=1):
            await asyncio.sleep(0.01)
    print("done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="the kill test's worker process")
    parser.add_argument("database")
    parser.add_argument("--actors", type=int, default=Workload.actors)
    parser.add_argument("--per-actor", type=int, default=Workload.per_actor)
    parser.add_argument("--batch", type=int, default=Workload.batch)
    parser.add_argument("--follow-every", type=int, default=Workload.follow_every)
    parser.add_argument("--durability", choices=["full", "normal"], default="full")
    parser.add_argument("--fire-batch", type=int, default=Workload.fire_batch)
    parser.add_argument("--fetch-url", required=True, help="the harness's number server")
    args = parser.parse_args()
    Tally.fetch_url = args.fetch_url
    workload = Workload(
        args.actors,
        args.per_actor,
        args.batch,
        args.follow_every,
        args.durability,
        args.fire_batch,
    )
    asyncio.run(work(args.database, workload))


# -- the checker ---------------------------------------------------------------------------


def check_database(database: str, workload: Workload, *, final: bool) -> list[str]:
    """Every way the database breaks exactly-once; empty when it is consistent.

    Mid-way (``final=False``) some work may be left, but what is there must add up: a
    batch's continuations exist if and only if its marker does; an effect is applied once
    if and only if its continuation completed, never twice; a follow-up exists if and only
    if its parent completed. At the end, everything must be scheduled and completed.
    """
    codec = Codec(trusted=True)
    read = _read_postgres if database.startswith("postgresql://") else _read_sqlite
    found = read(database)
    if found is None:
        # Killed before its first migration committed: nothing can have happened yet.
        return ["the schema was never created"] if final else []
    rows, stored, calls = found
    state = {(instance, key): codec.loads(value) for instance, key, value in stored}
    # A remote call's effect on the Bank commits with its caller's stored result: once.
    state.update({(f"t{i[1:]}", k): codec.loads(v) for i, k, v in calls})
    problems: list[str] = []
    statuses: dict[tuple[str, str], str] = {}
    for instance, key, status in rows:
        if (instance, key) in statuses:
            problems.append(f"{instance}: {key} was scheduled twice")
        statuses[instance, key] = status
        if status not in ("pending", "completed"):
            problems.append(f"{instance}: {key} is {status}")
    for actor in range(workload.actors):
        problems += _check_actor(workload, actor, statuses, state, final=final)
    return problems


_QUERIES = (
    "SELECT instance, key, status FROM continuations WHERE binding = 'Tally'",
    "SELECT instance, key, value FROM actor_state WHERE binding = 'Tally'",
    "SELECT instance, key, value FROM actor_state WHERE binding = 'Bank'",
)
Found = tuple[list[Any], list[Any], list[Any]]


def _read_sqlite(database: str) -> Found | None:
    """The rows ``check_database`` checks, or ``None`` before the schema exists."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if "schema_version" not in tables or "continuations" not in tables:
            return None
        rows, stored, calls = (db.execute(query).fetchall() for query in _QUERIES)
    return rows, stored, calls


def _read_postgres(database: str) -> Found | None:
    from tests.postgres import database_of  # the harness's import, not the worker's

    db = database_of(database)
    exists = "SELECT to_regclass('schema_version') IS NOT NULL"
    if not db.fetch(exists)[0][0]:
        return None
    rows, stored, calls = (db.fetch(query) for query in _QUERIES)
    return rows, stored, calls


def _check_actor(
    workload: Workload,
    actor: int,
    statuses: dict[tuple[str, str], str],
    state: dict[tuple[str, str], Any],
    *,
    final: bool,
) -> list[str]:
    instance = f"t{actor}"
    problems: list[str] = []
    for batch in range(workload.batches):
        marked = state.get((instance, f"batch:{batch}"), False)
        if final and not marked:
            problems.append(f"{instance}: batch {batch} was never scheduled")
        for number in workload.numbers(actor, batch):
            bump, follow = (instance, f"bump:{number}"), (instance, f"follow:{number}")
            if marked != (bump in statuses):
                problems.append(f"{instance}: bump:{number} and batch {batch}'s marker disagree")
            problems += _check_effect(bump, statuses, state, final=final)
            if number % workload.follow_every == 0:
                if (statuses.get(bump) == "completed") != (follow in statuses):
                    problems.append(f"{instance}: follow:{number} and its parent disagree")
                problems += _check_effect(follow, statuses, state, final=final)
                if follow_strategy(number, workload.follow_every) == "remote-call":
                    problems += _check_call(instance, number, statuses, state)
    completed = sum(
        1 for (owner, _), status in statuses.items() if owner == instance and status == "completed"
    )
    total = state.get((instance, "total"), 0)
    if total != completed:
        problems.append(f"{instance}: total is {total}, but {completed} continuations completed")
    return problems


def _check_call(
    instance: str,
    number: int,
    statuses: dict[tuple[str, str], str],
    state: dict[tuple[str, str], Any],
) -> list[str]:
    """A remote call ran at most once, and surely once if its caller's handler ran."""
    applied = state.get((instance, f"call:{number}"), 0)
    if applied not in (0, 1):
        return [f"{instance}: the call for follow:{number} ran {applied} times"]
    if statuses.get((instance, f"follow:{number}")) == "completed" and applied != 1:
        return [f"{instance}: follow:{number} completed, but its call never ran"]
    return []


def _check_effect(
    key: tuple[str, str],
    statuses: dict[tuple[str, str], str],
    state: dict[tuple[str, str], Any],
    *,
    final: bool,
) -> list[str]:
    """One continuation: its effect is applied once if it completed, else not at all."""
    status, applied = statuses.get(key), state.get(key, 0)
    where = f"{key[0]}: {key[1]}"
    if applied not in (0, 1):
        return [f"{where} was applied {applied} times"]
    if (status == "completed") != (applied == 1):
        return [f"{where} is {status} but applied {applied} times"]
    if final and status != "completed":
        return [f"{where} is {status or 'missing'} at the end"]
    return []


# -- the harness ---------------------------------------------------------------------------


@dataclass
class Campaign:
    """What happened across the runs of the worker."""

    seed: int
    runs: int = 0
    kills: int = 0
    phases: Counter[str] = field(default_factory=Counter)
    """Where each kill landed: start-up (before the system was open), scheduling (firing
    alongside), or firing (everything scheduled)."""
    committed_before_kill: list[int] = field(default_factory=list)
    seconds: float = 0.0


class _Worker:
    """One worker process, its stdout read into a queue by a thread."""

    def __init__(
        self, database: str, workload: Workload, stderr: IO[bytes], fetch_url: str
    ) -> None:
        command = [sys.executable, "-m", "tests.continuation.kill_worker", database]
        self.process = subprocess.Popen(
            [*command, *workload.arguments(), f"--fetch-url={fetch_url}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.spawned = time.monotonic()
        self.opened: float | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.phase = "start-up"
        self.committed = 0
        self.done = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def poll(self, timeout: float) -> bool:
        """Take the worker's next line, if one comes within ``timeout``; False at its end."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return True
        if line is None:
            return False
        if line == "started":
            self.phase, self.opened = "scheduling", time.monotonic()
        elif line == "scheduled":
            self.phase = "firing"
        elif line == "done":
            self.done = True
        elif line.startswith("committed "):
            self.committed = int(line.split()[1])
        return True

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.finish()

    def finish(self) -> int:
        code = self.process.wait()
        self._reader.join()
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code


@dataclass(frozen=True)
class _KillPlan:
    """When to kill one run: ``seconds`` after spawning (mode ``start-up``) or after the
    system opened (``time``), or after ``firings`` durable firings (``progress``); and in
    any case after ``cap`` durable firings."""

    mode: str
    seconds: float
    firings: int
    cap: int

    @classmethod
    def draw(cls, rng: random.Random, *, max_delay: float, cap: int) -> _KillPlan:
        mode = rng.choices(["start-up", "time", "progress"], weights=[15, 45, 40])[0]
        seconds = rng.uniform(0.05, 0.45) if mode == "start-up" else rng.uniform(0, max_delay)
        return cls(mode, seconds, rng.randint(1, cap), cap)

    def due(self, worker: _Worker) -> bool:
        now = time.monotonic()
        if worker.committed >= self.cap:
            return True
        if self.mode == "start-up":
            return now - worker.spawned >= self.seconds
        if self.mode == "time":
            return worker.opened is not None and now - worker.opened >= self.seconds
        return worker.committed >= self.firings


@contextlib.contextmanager
def _number_server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1, in a thread, answering ``GET /N`` with ``N``: what the
    workers' proxy-fetches ask for."""

    class Numbers(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = self.path.strip("/").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Log nothing: the harness reads only the workers' output."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Numbers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_campaign(
    database: str,
    workload: Workload,
    *,
    min_kills: int,
    seed: int,
    max_kill_delay: float = 0.4,
    run_timeout: float = 120.0,
    log: Path | None = None,
) -> Campaign:
    """Run the worker, killing it ``min_kills`` times, until one run finishes the work.

    Each run is killed at a random moment (see ``_KillPlan``), after at most a share of the
    work, so that the kills do not run out before the work does; the database is checked
    after each kill. The workers' stderr goes to ``log`` (by default, ``database`` +
    ``.stderr``).

    Raises:
        AssertionError: a worker failed or hung, or a kill left an inconsistent database.
    """
    rng = random.Random(seed)
    campaign = Campaign(seed=seed)
    started = time.monotonic()
    log = log or Path(f"{database}.stderr")
    with open(log, "wb") as stderr, _number_server() as fetch_url:
        while campaign.kills < min_kills:
            # Share what is left among the runs still to come, the last one unkilled, so the
            # kills spread over the whole work and cannot run out before it is done. A kill
            # lands at most a fire batch or two past its cap.
            left = workload.continuations - sum(campaign.committed_before_kill)
            share = left // (min_kills - campaign.kills + 1) - 2 * workload.fire_batch
            plan = _KillPlan.draw(rng, max_delay=max_kill_delay, cap=max(1, share))
            worker = _Worker(database, workload, stderr, fetch_url)
            campaign.runs += 1
            if not _run_until(worker, plan.due, run_timeout):
                _finished(worker, log, seed)
                break  # it finished before the kill: the work is done
            worker.kill()
            campaign.kills += 1
            campaign.phases[worker.phase] += 1
            campaign.committed_before_kill.append(worker.committed)
            problems = check_database(database, workload, final=False)
            if problems:
                where = f"seed {seed}: after kill {campaign.kills} ({worker.phase})"
                raise AssertionError(f"{where}: " + "; ".join(problems[:10]))
        else:
            worker = _Worker(database, workload, stderr, fetch_url)
            campaign.runs += 1
            _run_until(worker, lambda worker: False, run_timeout)
            _finished(worker, log, seed)
    campaign.seconds = time.monotonic() - started
    return campaign


def _run_until(worker: _Worker, due: Callable[[_Worker], bool], timeout: float) -> bool:
    """Follow the worker until ``due`` says so (True) or it ends by itself (False)."""
    while worker.poll(0.005):
        if not worker.done and due(worker):
            return True
        if time.monotonic() > worker.spawned + timeout:
            worker.kill()
            raise AssertionError(f"a worker did not finish within {timeout} s")
    return False


def _finished(worker: _Worker, log: Path, seed: int) -> None:
    code = worker.finish()
    if code != 0 or not worker.done:
        tail = log.read_text()[-3000:]
        raise AssertionError(f"seed {seed}: a worker exited with {code}:\n{tail}")


if __name__ == "__main__":
    main()
