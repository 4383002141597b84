"""Bad input at every public entry point: a typed error that names the problem, and nothing
already stored is lost, changed or duplicated by it.

Most tests start from a baseline (a stored value and a pending continuation), feed one bad
input, and then check the baseline: the value is unchanged, no other continuation exists,
and the pending one still fires.
"""

from __future__ import annotations

import math
import socket
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from continuation import (
    Actor,
    ActorRef,
    ActorStorage,
    ActorSystem,
    AlarmInfo,
    Continuation,
    ContinuationChainError,
    ContinuationNotFoundError,
    ContinuationOptionsError,
    ContinuationStateError,
    InvalidArgumentError,
    ManualClock,
    OutsideTurnError,
    RetryPolicy,
    SchemaVersionError,
    StoreError,
    SystemClosedError,
    UnknownActorError,
)
from operation_chain import ChainSecurityError, OperationProxy, UnsupportedTypeError

from .conftest import OpenSystem


def cases(table: dict[str, Any]) -> list[str]:
    """The table's case names, as parameters."""
    return list(table)


class Other(Actor):
    def done(self, label: str, info: AlarmInfo) -> None:
        pass


class Probe(Actor):
    marker = "a class attribute, not a method"

    def prepare(self) -> str:
        self.storage.put("kept", "before")
        c = Continuation(self)
        return self.continue_(c.done("baseline", c.result), strategy="alarm", delay=10)

    def done(self, label: str, info: AlarmInfo) -> None:
        self.storage.put(f"done:{label}", info.attempt)

    def on_error(self, label: str, error: Exception) -> None:
        self.storage.put(f"error:{label}", type(error).__name__)

    def explode(self, info: AlarmInfo) -> None:
        raise RuntimeError("always")

    def pair(self, a: int, b: int = 0, *, flag: bool = False) -> int:
        return a + b

    def label(self) -> str:
        return "label"

    async def slow(self, info: AlarmInfo) -> None:
        pass

    def _secret(self, info: AlarmInfo) -> None:
        pass

    def attempt(self, case: str) -> str:
        """Write, then make one bad ``continue_`` call: the turn must leave no trace."""
        self.storage.put("kept", "changed by a turn that raised")
        return str(CONTINUE_CASES[case][0](self))

    def write(self, case: str) -> None:
        self.storage.put("kept", "changed by a turn that raised")
        STORAGE_CASES[case][0](self.storage)

    def put(self, key: str, value: Any) -> None:
        self.storage.put(key, value)

    def get(self, key: str) -> Any:
        return self.storage.get(key)

    def cancel_in_turn(self, cid: Any) -> None:
        self.cancel_continuation(cid)

    def schedule(self, label: str, *, error_chain: bool = False, **options: Any) -> str:
        c = Continuation(self)
        on_error = c.on_error(label, c.error) if error_chain else None
        return self.continue_(c.done(label, c.result), on_error, strategy="alarm", **options)

    def doomed(self, key: str) -> str:
        """A continuation that fails at once and, with one attempt, is dead."""
        c = Continuation(self)
        return self.continue_(c.explode(c.result), strategy="alarm", delay=0, key=key, retry=1)

    def itself(self) -> Probe:
        return self

    def state(self) -> dict[str, Any]:
        return self.storage.list()


class ProbeTwin(Actor):
    binding = "Probe"


@dataclass
class Baseline:
    """A value and a pending continuation stored before the bad input."""

    system: ActorSystem
    ref: ActorRef
    cid: str
    open_system: OpenSystem

    async def reopened(self) -> Baseline:
        system = self.open_system(Probe)
        await system.start()
        return Baseline(system, system.get(Probe, "p"), self.cid, self.open_system)

    async def still_consistent(self) -> None:
        assert await self.ref.state() == {"kept": "before"}
        infos = await self.system.continuations()
        assert [(i.id, i.status) for i in infos] == [(self.cid, "pending")]
        await self.system.advance(10)
        assert (await self.system.continuation(self.cid)).status == "completed"
        assert await self.ref.state() == {"kept": "before", "done:baseline": 1}


@pytest.fixture
async def baseline(open_system: OpenSystem) -> Baseline:
    system = open_system(Probe)
    await system.start()
    ref = system.get(Probe, "p")
    return Baseline(system, ref, await ref.prepare(), open_system)


# -- ActorSystem(...) ------------------------------------------------------------------------

CONSTRUCTOR_CASES: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "database is an int": ({"database": 42}, TypeError, "database"),
    "database is None": ({"database": None}, TypeError, "database"),
    "actors is not iterable": ({"actors": 5}, TypeError, "not iterable"),
    "actors holds an instance": ({"actors": [object()]}, TypeError, "Actor subclasses"),
    "actors is a str": ({"actors": "Probe"}, TypeError, "Actor subclasses"),
    "actors holds Actor itself": ({"actors": [Actor]}, TypeError, "Actor subclasses"),
    "actors holds another class": ({"actors": [dict]}, TypeError, "Actor subclasses"),
    "two classes share a binding": (
        {"actors": [Probe, ProbeTwin]}, InvalidArgumentError, "binding 'Probe'"
    ),
    "clock without now()": ({"clock": object()}, TypeError, "clock"),
    "clock is a class": ({"clock": ManualClock}, TypeError, "clock"),
    "unknown durability": ({"durability": "fast"}, InvalidArgumentError, "durability"),
    "retry is a count": ({"retry": 3}, TypeError, "RetryPolicy"),
    "idle_timeout is zero": ({"idle_timeout": 0}, InvalidArgumentError, "idle_timeout"),
    "idle_timeout is negative": ({"idle_timeout": -1}, InvalidArgumentError, "idle_timeout"),
    "idle_timeout is nan": ({"idle_timeout": math.nan}, InvalidArgumentError, "idle_timeout"),
    "idle_timeout is a str": ({"idle_timeout": "5"}, TypeError, "idle_timeout"),
    "idle_timeout is a bool": ({"idle_timeout": True}, TypeError, "idle_timeout"),
    "retention is negative": (
        {"retention": timedelta(days=-1)}, InvalidArgumentError, "retention"
    ),
    "retention is infinite": ({"retention": math.inf}, InvalidArgumentError, "retention"),
    "retention is a str": ({"retention": "7d"}, TypeError, "retention"),
    "signing_key is a str": ({"signing_key": "secret"}, TypeError, "signing_key"),
    "signing_key is empty": ({"signing_key": b""}, InvalidArgumentError, "signing_key"),
    "policy is a str": ({"policy": "strict"}, TypeError, "policy"),
    "batch_size is zero": ({"batch_size": 0}, InvalidArgumentError, "batch_size"),
    "batch_size is a str": ({"batch_size": "10"}, TypeError, "batch_size"),
    "unknown option": ({"colour": "red"}, TypeError, "colour"),
}  # fmt: skip


@pytest.mark.parametrize("case", cases(CONSTRUCTOR_CASES))
async def test_constructor_refuses_bad_arguments(
    case: str, baseline: Baseline, db_path: str
) -> None:
    options, error, match = CONSTRUCTOR_CASES[case]
    options = {"database": db_path, "actors": [Probe], "clock": ManualClock(), **options}
    with pytest.raises(error, match=match):
        ActorSystem(**options)
    await baseline.still_consistent()


# Files that are not SQLite databases, directories and missing directories: SQLite only (the
# PostgreSQL twins, a bad URL and a newer schema, are in test_postgres_store.py).


async def test_start_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not an SQLite database " * 200)
    system = ActorSystem(path, actors=[Probe], clock=ManualClock())
    with pytest.raises(StoreError, match="cannot open"):
        await system.start()
    assert path.read_bytes() == b"this is not an SQLite database " * 200


def tables_and_versions(path: Path) -> tuple[list[str], list[int]]:
    db = sqlite3.connect(path)
    try:
        tables = db.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall()
        versions = db.execute("SELECT version FROM schema_version").fetchall()
    finally:
        db.close()
    return [t[0] for t in tables], [v[0] for v in versions]


async def test_start_refuses_a_database_from_a_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    db = sqlite3.connect(path)
    with db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("CREATE TABLE future (x)")
        db.execute("INSERT INTO schema_version VALUES (99)")
    db.close()
    system = ActorSystem(path, actors=[Probe], clock=ManualClock())
    with pytest.raises(SchemaVersionError, match="schema version 99, newer"):
        await system.start()
    assert tables_and_versions(path) == (["future", "schema_version"], [99])


async def test_start_refuses_a_directory(tmp_path: Path) -> None:
    system = ActorSystem(tmp_path, actors=[Probe], clock=ManualClock())
    with pytest.raises(StoreError, match="cannot open"):
        await system.start()


async def test_start_refuses_a_database_in_a_missing_directory(tmp_path: Path) -> None:
    system = ActorSystem(tmp_path / "missing" / "x.db", actors=[Probe], clock=ManualClock())
    with pytest.raises(StoreError, match="cannot open"):
        await system.start()
    assert not (tmp_path / "missing").exists()


# -- lifecycle -------------------------------------------------------------------------------

ENTRY_POINTS: dict[str, Callable[[ActorSystem], Awaitable[Any]]] = {
    "a call": lambda system: system.get(Probe, "p").state(),
    "continuation": lambda system: system.continuation("0" * 32),
    "continuations": lambda system: system.continuations(),
    "cancel": lambda system: system.cancel("0" * 32),
    "retry": lambda system: system.retry("0" * 32),
    "purge": lambda system: system.purge(),
    "drain": lambda system: system.drain(),
    "advance": lambda system: system.advance(1),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
async def test_entry_points_refuse_a_system_not_started(
    entry: str, open_system: OpenSystem
) -> None:
    system = open_system(Probe)
    with pytest.raises(SystemClosedError, match="not running"):
        await ENTRY_POINTS[entry](system)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
async def test_entry_points_refuse_a_closed_system(entry: str, baseline: Baseline) -> None:
    await baseline.system.aclose()
    with pytest.raises(SystemClosedError, match="closed"):
        await ENTRY_POINTS[entry](baseline.system)
    with pytest.raises(SystemClosedError):
        await baseline.ref.state()
    await (await baseline.reopened()).still_consistent()


async def test_a_system_starts_once(baseline: Baseline) -> None:
    with pytest.raises(SystemClosedError, match="running"):
        await baseline.system.start()
    await baseline.system.aclose()
    with pytest.raises(SystemClosedError, match="closed"):
        await baseline.system.start()
    await (await baseline.reopened()).still_consistent()


# -- system.get and refs ---------------------------------------------------------------------

GET_CASES: dict[str, tuple[object, object, type[Exception], str]] = {
    "an unregistered class": (Other, "p", UnknownActorError, "not registered"),
    "an unregistered binding": ("Nobody", "p", UnknownActorError, "not registered"),
    "Actor itself": (Actor, "p", UnknownActorError, "not registered"),
    "a class with a registered binding": (ProbeTwin, "p", UnknownActorError, "not registered"),
    "neither a class nor a str": (42, "p", UnknownActorError, "not registered"),
    "an int instance id": (Probe, 1, TypeError, "instance ids are str"),
    "a None instance id": (Probe, None, TypeError, "instance ids are str"),
    "an empty instance id": (Probe, "", InvalidArgumentError, "1 to 512"),
    "a long instance id": (Probe, "x" * 513, InvalidArgumentError, "1 to 512"),
    "an instance id with a NUL": (Probe, "p\x00", InvalidArgumentError, "none of them NUL"),
}


@pytest.mark.parametrize("case", cases(GET_CASES))
async def test_get_refuses_unknown_actors_and_bad_ids(case: str, baseline: Baseline) -> None:
    actor, instance, error, match = GET_CASES[case]
    with pytest.raises(error, match=match):
        baseline.system.get(actor, instance)  # type: ignore[arg-type]
    await baseline.still_consistent()


REF_CASES: dict[str, tuple[Callable[[ActorRef], Awaitable[Any]], type[Exception], str]] = {
    "the ref itself": (lambda ref: ref, TypeError, "not the ref itself"),
    "a private method": (lambda ref: ref._secret(None), ChainSecurityError, "_secret"),
    "a missing argument": (lambda ref: ref.pair(), TypeError, "argument"),
    "an unknown keyword": (lambda ref: ref.pair(1, colour="red"), TypeError, "colour"),
}


@pytest.mark.parametrize("case", cases(REF_CASES))
async def test_ref_calls_refuse_bad_calls(case: str, baseline: Baseline) -> None:
    call, error, match = REF_CASES[case]
    with pytest.raises(error, match=match):
        await call(baseline.ref)
    await baseline.still_consistent()


# -- continue_ -------------------------------------------------------------------------------


def handler(actor: Probe) -> Any:
    c = Continuation(actor)
    return c.done("bad", c.result)


def nested_missing_method(actor: Probe) -> str:
    c = Continuation(actor)
    return actor.continue_(c.pair(c.nope(), 1), delay=1)


def nested_bad_arguments(actor: Probe) -> str:
    c = Continuation(actor)
    return actor.continue_(c.pair(c.label(1), 1), delay=1)


CONTINUE_CASES: dict[str, tuple[Callable[[Probe], object], type[Exception], str]] = {
    "a key with a NUL": (
        lambda a: a.continue_(handler(a), delay=1, key="k\x00"),
        ContinuationOptionsError, "key",
    ),
    "an unknown strategy": (
        lambda a: a.continue_(handler(a), strategy="carrier-pigeon", delay=1),
        ContinuationOptionsError, "unknown strategy 'carrier-pigeon'",
    ),
    "a strategy that is not a str": (
        lambda a: a.continue_(handler(a), strategy=None, delay=1),  # type: ignore[arg-type]
        ContinuationOptionsError, "unknown strategy None",
    ),
    "delay with cron": (
        lambda a: a.continue_(handler(a), delay=1, cron="* * * * *"),
        ContinuationOptionsError, "delay and cron",
    ),
    "delay with at": (
        lambda a: a.continue_(handler(a), delay=1, at=datetime(2030, 1, 1, tzinfo=UTC)),
        ContinuationOptionsError, "delay and at",
    ),
    "no time at all": (
        lambda a: a.continue_(handler(a)), ContinuationOptionsError, "exactly one of",
    ),
    "a negative retry count": (
        lambda a: a.continue_(handler(a), delay=1, retry=-1),
        ContinuationOptionsError, "retry.max_attempts: Input should be greater than",
    ),
    "a zero retry count": (
        lambda a: a.continue_(handler(a), delay=1, retry=0),
        ContinuationOptionsError, "retry.max_attempts",
    ),
    "a retry that is a str": (
        lambda a: a.continue_(handler(a), delay=1, retry="3"),
        ContinuationOptionsError, "retry: Input should be",
    ),
    "a retry that is a bool": (
        lambda a: a.continue_(handler(a), delay=1, retry=True),
        ContinuationOptionsError, "retry: Input should be",
    ),
    "a bad cron expression": (
        lambda a: a.continue_(handler(a), cron="every tuesday"),
        ContinuationOptionsError, "not a valid cron expression",
    ),
    "a cron field out of range": (
        lambda a: a.continue_(handler(a), cron="61 * * * *"),
        ContinuationOptionsError, "not a valid cron expression",
    ),
    "a cron that is not a str": (
        lambda a: a.continue_(handler(a), cron=5), ContinuationOptionsError, "cron",
    ),
    "a naive datetime for at": (
        lambda a: a.continue_(handler(a), at=datetime(2030, 1, 1)),
        ContinuationOptionsError, "aware datetime",
    ),
    "a word for at": (
        lambda a: a.continue_(handler(a), at="tomorrow"), ContinuationOptionsError, "at",
    ),
    "a word for delay": (
        lambda a: a.continue_(handler(a), delay="soon"), ContinuationOptionsError, "delay",
    ),
    "a nan delay": (
        lambda a: a.continue_(handler(a), delay=math.nan), ContinuationOptionsError, "delay",
    ),
    "an infinite delay": (
        lambda a: a.continue_(handler(a), delay=math.inf), ContinuationOptionsError, "delay",
    ),
    "an unknown option": (
        lambda a: a.continue_(handler(a), delai=1),
        ContinuationOptionsError, "delai: Extra inputs are not permitted",
    ),
    "timezone without cron": (
        lambda a: a.continue_(handler(a), delay=1, timezone="UTC"),
        ContinuationOptionsError, "timezone applies to cron only",
    ),
    "an unknown timezone": (
        lambda a: a.continue_(handler(a), cron="0 * * * *", timezone="Mars/Olympus"),
        ContinuationOptionsError, "unknown time zone",
    ),
    "an empty key": (
        lambda a: a.continue_(handler(a), delay=1, key=""), ContinuationOptionsError, "key",
    ),
    "a key that is not a str": (
        lambda a: a.continue_(handler(a), delay=1, key=5), ContinuationOptionsError, "key",
    ),
    "a key that is too long": (
        lambda a: a.continue_(handler(a), delay=1, key="k" * 201),
        ContinuationOptionsError, "key: String should have at most 200 characters",
    ),
    "a chain that is a str": (
        lambda a: a.continue_("done", delay=1),
        ContinuationChainError, "recorded on Continuation",
    ),
    "a chain on a plain proxy": (
        lambda a: a.continue_(OperationProxy().done("x", 1), delay=1),
        ContinuationChainError, "recorded on Continuation",
    ),
    "a chain recorded for another class": (
        lambda a: a.continue_(Continuation(Other).done("x", Continuation(Other).result), delay=1),
        ContinuationChainError, "recorded for Other",
    ),
    "a chain without a call": (
        lambda a: a.continue_(Continuation(a).done, delay=1),
        ContinuationChainError, "must start with a method call",
    ),
    "a chain that is only the root": (
        lambda a: a.continue_(Continuation(a), delay=1),
        ContinuationChainError, "must start with a method call",
    ),
    "a missing method": (
        lambda a: a.continue_(Continuation(a).nope(Continuation.result), delay=1),
        ContinuationChainError, "Probe.nope is not a method",
    ),
    "an attribute that is not a method": (
        lambda a: a.continue_(Continuation(a).marker(Continuation.result), delay=1),
        ContinuationChainError, "Probe.marker is not a method",
    ),
    "a private method": (
        lambda a: a.continue_(Continuation(a)._secret(Continuation.result), delay=1),
        ContinuationChainError, "Probe._secret is private",
    ),
    "an async method": (
        lambda a: a.continue_(Continuation(a).slow(Continuation.result), delay=1),
        ContinuationChainError, "Probe.slow is async; handlers run as synchronous turns",
    ),
    "too many arguments": (
        lambda a: a.continue_(Continuation(a).pair(1, 2, 3), delay=1),
        ContinuationChainError, "too many positional arguments",
    ),
    "a missing argument": (
        lambda a: a.continue_(Continuation(a).pair(), delay=1),
        ContinuationChainError, "missing a required argument: 'a'",
    ),
    "an unknown keyword": (
        lambda a: a.continue_(Continuation(a).pair(1, colour="red"), delay=1),
        ContinuationChainError, "unexpected keyword argument 'colour'",
    ),
    "a keyword-only argument given by position": (
        lambda a: a.continue_(Continuation(a).pair(1, 2, True), delay=1),
        ContinuationChainError, "too many positional arguments",
    ),
    "a nested chain with a missing method": (
        nested_missing_method, ContinuationChainError, "Probe.nope is not a method",
    ),
    "a nested chain with bad arguments": (
        nested_bad_arguments, ContinuationChainError, "too many positional arguments",
    ),
    "an error chain that is a str": (
        lambda a: a.continue_(handler(a), "on_error", delay=1),
        ContinuationChainError, "error chain must be recorded on Continuation",
    ),
    "an error chain with a missing method": (
        lambda a: a.continue_(handler(a), Continuation(a).nope(Continuation.error), delay=1),
        ContinuationChainError, "Probe.nope is not a method",
    ),
    "a handler that takes c.error": (
        lambda a: a.continue_(Continuation(a).done("x", Continuation.error), delay=1),
        ContinuationChainError, "error",
    ),
    "a private attribute after the call": (
        lambda a: a.continue_(Continuation(a).label()._upper(), delay=1),
        ContinuationChainError, "_upper",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", cases(CONTINUE_CASES))
async def test_continue_refuses_bad_input_and_the_turn_leaves_no_trace(
    case: str, baseline: Baseline
) -> None:
    _, error, match = CONTINUE_CASES[case]
    with pytest.raises(error, match=match):
        await baseline.ref.attempt(case)
    await baseline.still_consistent()


# -- storage ---------------------------------------------------------------------------------


class Unpicklable:
    def __reduce__(self) -> Any:
        raise RuntimeError("refuses to be pickled")


def put_a_socket(storage: ActorStorage) -> None:
    with socket.socket() as sock:
        storage.put("socket", sock)


def put_a_generator(storage: ActorStorage) -> None:
    storage.put("generator", (i for i in range(3)))


STORAGE_CASES: dict[str, tuple[Callable[[ActorStorage], object], type[Exception], str]] = {
    "put with an int key": (lambda s: s.put(1, "x"), TypeError, "keys are str"),  # type: ignore[arg-type]
    "put with a None key": (lambda s: s.put(None, "x"), TypeError, "keys are str"),  # type: ignore[arg-type]
    "put with a bytes key": (lambda s: s.put(b"k", "x"), TypeError, "keys are str"),  # type: ignore[arg-type]
    "put with a NUL in the key": (lambda s: s.put("a\x00", "x"), InvalidArgumentError, "NUL"),
    "get with an int key": (lambda s: s.get(1), TypeError, "keys are str"),  # type: ignore[arg-type]
    "delete with an int key": (lambda s: s.delete(1), TypeError, "keys are str"),  # type: ignore[arg-type]
    "list with an int prefix": (lambda s: s.list(1), TypeError, "int"),  # type: ignore[arg-type]
    "list with a str limit": (lambda s: s.list(limit="2"), TypeError, "limit must be an int"),  # type: ignore[arg-type]
    "list with a negative limit": (lambda s: s.list(limit=-1), InvalidArgumentError, "limit"),
    "put a socket": (put_a_socket, UnsupportedTypeError, "socket"),
    "put a generator": (put_a_generator, UnsupportedTypeError, "generator"),
    "put a lock": (lambda s: s.put("lock", threading.Lock()), UnsupportedTypeError, "lock"),
    "put an object that refuses pickling": (
        lambda s: s.put("x", Unpicklable()), UnsupportedTypeError, "Unpicklable"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", cases(STORAGE_CASES))
async def test_storage_refuses_bad_keys_and_unencodable_values(
    case: str, baseline: Baseline
) -> None:
    _, error, match = STORAGE_CASES[case]
    with pytest.raises(error, match=match):
        await baseline.ref.write(case)
    await baseline.still_consistent()


async def test_storage_keeps_a_lambda_with_the_trusted_codec(open_system: OpenSystem) -> None:
    async with open_system(Probe) as system:
        ref = system.get(Probe, "p")
        await ref.put("f", lambda x: x * 2)
    async with open_system(Probe) as system:
        assert (await system.get(Probe, "p").get("f"))(21) == 42


OUTSIDE_CASES: dict[str, Callable[[Probe], object]] = {
    "storage.put": lambda a: a.storage.put("kept", "outside"),
    "storage.delete": lambda a: a.storage.delete("kept"),
    "continue_": lambda a: a.continue_(handler(a), delay=1),
    "cancel_continuation": lambda a: a.cancel_continuation("0" * 32),
    "send_downstream": lambda a: a.send_downstream("client", "hello"),
}


@pytest.mark.parametrize("case", cases(OUTSIDE_CASES))
async def test_turn_only_actions_refuse_outside_a_turn(case: str, baseline: Baseline) -> None:
    actor = await baseline.ref.itself()
    with pytest.raises(OutsideTurnError, match="during a turn"):
        OUTSIDE_CASES[case](actor)
    assert actor.storage.get("kept") == "before"
    await baseline.still_consistent()


async def test_actors_are_not_created_directly() -> None:
    with pytest.raises(TypeError, match=r"system\.get"):
        Probe()


# -- cancel, retry and inspection ------------------------------------------------------------

BY_ID: dict[str, Callable[[ActorSystem, Any], Awaitable[Any]]] = {
    "cancel": lambda system, cid: system.cancel(cid),
    "retry": lambda system, cid: system.retry(cid),
    "continuation": lambda system, cid: system.continuation(cid),
}
BAD_IDS: dict[str, tuple[object, type[Exception], str]] = {
    "an unknown id": ("0" * 32, ContinuationNotFoundError, "no continuation has the id"),
    "an empty id": ("", ContinuationNotFoundError, "no continuation has the id"),
    "an int id": (42, TypeError, "ids are str"),
    "a None id": (None, TypeError, "ids are str"),
    "a bytes id": (b"0" * 32, TypeError, "ids are str"),
}


@pytest.mark.parametrize("case", cases(BAD_IDS))
@pytest.mark.parametrize("operation", list(BY_ID))
async def test_by_id_operations_refuse_unknown_and_non_str_ids(
    operation: str, case: str, baseline: Baseline
) -> None:
    cid, error, match = BAD_IDS[case]
    with pytest.raises(error, match=match):
        await BY_ID[operation](baseline.system, cid)
    await baseline.still_consistent()


async def test_cancel_in_a_turn_refuses_a_non_str_id(baseline: Baseline) -> None:
    with pytest.raises(TypeError, match="ids are str"):
        await baseline.ref.cancel_in_turn(42)
    await baseline.still_consistent()


async def test_cancel_and_retry_refuse_the_wrong_status(baseline: Baseline) -> None:
    system, ref = baseline.system, baseline.ref
    with pytest.raises(ContinuationStateError, match=r"cannot retry .* it is pending"):
        await system.retry(baseline.cid)
    done = await ref.schedule("now", delay=0)
    cancelled = await ref.schedule("cancelled", delay=5)
    requested = await ref.schedule("requested", delay=5, error_chain=True)
    await system.advance(0)
    await system.cancel(cancelled)
    await system.cancel(requested)
    cases = [
        (system.cancel, done, r"cannot cancel .* it is completed"),
        (system.retry, done, r"cannot retry .* it is completed"),
        (system.cancel, cancelled, r"cannot cancel .* it is cancelled"),
        (system.retry, cancelled, r"cannot retry .* it is cancelled"),
        (system.cancel, requested, r"cannot cancel .* it is already cancelled"),
        (system.retry, requested, r"cannot retry .* it is already cancelled"),
    ]
    for operation, cid, match in cases:
        with pytest.raises(ContinuationStateError, match=match):
            await operation(cid)
    statuses = {i.id: i.status for i in await system.continuations()}
    assert statuses == {
        baseline.cid: "pending",
        done: "completed",
        cancelled: "cancelled",
        requested: "pending",
    }
    await system.advance(10)
    assert (await system.continuation(baseline.cid)).status == "completed"
    assert (await system.continuation(requested)).status == "cancelled"


async def test_retry_refuses_when_a_pending_continuation_holds_the_key(
    open_system: OpenSystem,
) -> None:
    async with open_system(Probe) as system:
        dead = await system.get(Probe, "p").doomed("k")
        await system.advance(0)
        assert (await system.continuation(dead)).status == "dead"
    # A new system, so the dead continuation's key is not remembered in memory (see
    # test_a_dead_continuation_frees_its_key in test_scheduler_model.py).
    async with open_system(Probe) as system:
        ref = system.get(Probe, "p")
        holder = await ref.schedule("holder", delay=5, key="k")
        with pytest.raises(ContinuationStateError, match="'k'"):
            await system.retry(dead)
        statuses = {i.id: i.status for i in await system.continuations()}
        assert statuses == {dead: "dead", holder: "pending"}
        await system.advance(5)
        assert (await system.continuation(holder)).status == "completed"


FILTER_CASES: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "an unknown status": ({"status": "bogus"}, InvalidArgumentError, "unknown status"),
    "an unknown status in a list": (
        {"status": ["pending", "bogus"]}, InvalidArgumentError, "unknown status"
    ),
    "a status that is an int": ({"status": 42}, TypeError, "int"),
    "a zero limit": ({"limit": 0}, InvalidArgumentError, "limit"),
    "a negative limit": ({"limit": -1}, InvalidArgumentError, "limit"),
    "a limit that is a str": ({"limit": "10"}, TypeError, "limit"),
    "an unknown filter": ({"colour": "red"}, TypeError, "colour"),
    "a binding that is an int": ({"binding": 42}, TypeError, "binding"),
    "a binding that is a list": ({"binding": ["Probe"]}, TypeError, "binding"),
}  # fmt: skip


@pytest.mark.parametrize("case", cases(FILTER_CASES))
async def test_continuations_refuses_bad_filters(case: str, baseline: Baseline) -> None:
    filters, error, match = FILTER_CASES[case]
    with pytest.raises(error, match=match):
        await baseline.system.continuations(**filters)
    await baseline.still_consistent()


# -- time ------------------------------------------------------------------------------------

ADVANCE_CASES: dict[str, tuple[object, type[Exception], str]] = {
    "a negative number": (-1, InvalidArgumentError, "non-negative"),
    "nan": (math.nan, InvalidArgumentError, "non-negative"),
    "infinity": (math.inf, InvalidArgumentError, "finite"),
    "a str": ("10", TypeError, "number"),
    "None": (None, TypeError, "number"),
    "a timedelta": (timedelta(seconds=10), TypeError, "number"),
}


@pytest.mark.parametrize("case", cases(ADVANCE_CASES))
async def test_advance_refuses_bad_durations(case: str, baseline: Baseline) -> None:
    seconds, error, match = ADVANCE_CASES[case]
    with pytest.raises(error, match=match):
        await baseline.system.advance(seconds)  # type: ignore[arg-type]
    await baseline.still_consistent()


async def test_advance_refuses_a_real_clock(db_path: str) -> None:
    async with ActorSystem(db_path, actors=[Probe]) as system:
        with pytest.raises(InvalidArgumentError, match="ManualClock"):
            await system.advance(1)


def test_manual_clock_refuses_a_start_that_is_not_a_time() -> None:
    with pytest.raises(TypeError, match="start"):
        ManualClock(start="2026-01-01")  # type: ignore[arg-type]


def test_manual_clock_refuses_a_naive_start() -> None:
    with pytest.raises(InvalidArgumentError, match="aware"):
        ManualClock(start=datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"base_delay": -1.0}, "base_delay"),
        ({"max_delay": math.inf}, "max_delay"),
        ({"jitter": 2.0}, "jitter"),
        ({"backoff": 2.0}, "backoff"),
    ],
)
def test_retry_policy_refuses_bad_values(options: dict[str, Any], match: str) -> None:
    # A pydantic model: its ValidationError (a ValueError) names every bad field.
    with pytest.raises(ValidationError, match=match):
        RetryPolicy(**options)
