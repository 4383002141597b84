"""Hosts sharing one PostgreSQL database, in one process: leases, fencing, forwarding, claims.

Each ``ActorSystem`` here is one host (its own host id, its own pool). Lease expiry is
simulated by moving a lease's expiry in the database, never by waiting for it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from continuation import (
    Actor,
    ActorSystem,
    ActorUnavailableError,
    AlarmInfo,
    Continuation,
    LeaseLostError,
    ManualClock,
)
from continuation._hosts_command import run_hosts
from continuation._store.postgres_hosts import NOW
from rpc.server import create_rpc_app

from ..e2e.conftest import Running, free_port, start_server
from ..postgres import PostgresDatabase, fresh_database

Host = Callable[..., ActorSystem]


class Shop(Actor):
    def buy(self, amount: int) -> str:
        c = Continuation(self)
        return self.continue_(
            c.bought(c.result),
            strategy="remote-call",
            binding="Account",
            instance="x",
            call=Continuation(Account).deposit(amount),
            timeout=60,
        )

    def bought(self, balance: int) -> None:
        self.storage.put("balances", [*self.storage.get("balances", []), balance])

    def balances(self) -> list[int]:
        return list(self.storage.get("balances", []))


class Account(Actor):
    def deposit(self, amount: int) -> int:
        balance = self.storage.get("balance", 0) + amount
        self.storage.put("balance", balance)
        return balance

    def balance(self) -> int:
        return int(self.storage.get("balance", 0))

    def remind(self, delay: float) -> str:
        c = Continuation(self)
        return self.continue_(c.reminded(c.result), delay=delay)

    def reminded(self, info: AlarmInfo) -> None:
        self.storage.put("reminders", self.storage.get("reminders", 0) + 1)

    def reminders(self) -> int:
        return int(self.storage.get("reminders", 0))


@pytest.fixture
def database() -> AsyncIterator[PostgresDatabase]:
    with fresh_database() as db:
        yield db  # type: ignore[misc]


@pytest.fixture
async def open_host(database: PostgresDatabase) -> AsyncIterator[Host]:
    """Start hosts on the test's database; all are closed at the end."""
    opened: list[ActorSystem] = []
    servers: list[Running] = []

    async def open_(host_id: str, *, serve: bool = False, **options: Any) -> ActorSystem:
        options.setdefault("clock", ManualClock())
        system = ActorSystem(database.url, actors=[Account, Shop], host_id=host_id, **options)
        if serve:
            running = await start_server(create_rpc_app(system))
            servers.append(running)
            system.address = running.ws_url
        await system.start()
        opened.append(system)
        return system

    yield open_  # type: ignore[misc]
    for system in opened:
        await system.aclose()
    for server in servers:
        await server.stop()


def lease_of(database: PostgresDatabase, instance: str) -> tuple[str, int] | None:
    rows = database.fetch(
        f"SELECT host, epoch FROM leases WHERE binding = 'Account' AND instance = $1"
        f" AND expires_at > {NOW}",
        instance,
    )
    return None if not rows else (rows[0][0], rows[0][1])


def expire_leases(database: PostgresDatabase, host: str) -> None:
    """As if ``host`` had stalled past its leases."""
    database.execute("UPDATE leases SET expires_at = 0 WHERE host = $1", host)
    database.execute("UPDATE hosts SET expires_at = 0 WHERE id = $1", host)


async def test_an_actor_is_leased_by_the_host_that_activates_it(
    open_host: Host, database: PostgresDatabase
) -> None:
    a = await open_host("a")
    assert await a.get(Account, "x").deposit(5) == 5
    assert lease_of(database, "x") == ("a", 1)


async def test_a_call_through_another_host_is_forwarded_to_the_holder(
    open_host: Host, database: PostgresDatabase
) -> None:
    a = await open_host("a", serve=True)
    b = await open_host("b")
    assert await a.get(Account, "x").deposit(5) == 5
    assert await b.get(Account, "x").deposit(2) == 7  # ran on a, which holds x
    assert lease_of(database, "x") == ("a", 1)
    assert await a.get(Account, "x").balance() == 7


async def test_a_remote_call_to_an_actor_another_host_holds_runs_there_once(
    open_host: Host, database: PostgresDatabase
) -> None:
    a = await open_host("a", serve=True)
    b = await open_host("b")
    await a.get(Account, "x").deposit(5)
    await b.get(Shop, "s").buy(2)
    await b.drain()  # the call was forwarded to a, which holds Account/x
    assert await b.get(Shop, "s").balances() == [7]
    assert await a.get(Account, "x").balance() == 7
    assert lease_of(database, "x") == ("a", 1)
    # The call was answered under the continuation's id, as a second sending would be.
    assert len(database.fetch("SELECT key FROM call_results")) == 1


async def test_a_call_waits_out_the_lease_of_a_holder_that_cannot_be_reached(
    open_host: Host, database: PostgresDatabase
) -> None:
    a = await open_host("a", lease_ttl=0.3)
    a.address = f"ws://127.0.0.1:{free_port()}/rpc"  # nothing listens there: a "died"
    b = await open_host("b", lease_ttl=1.0)  # waits for an answer one lease period at most
    await a.get(Account, "x").deposit(5)
    await a._leases.directory.register("a", a.address, 0.3)  # type: ignore[union-attr]
    keeper_task = a._leases._task  # type: ignore[union-attr]
    assert keeper_task is not None
    keeper_task.cancel()  # a stops renewing: its leases run out within 0.3 s
    assert await b.get(Account, "x").deposit(1) == 6
    assert lease_of(database, "x") == ("b", 2)


async def test_a_call_to_an_unreachable_holder_whose_lease_outlasts_the_wait_is_refused(
    open_host: Host, database: PostgresDatabase
) -> None:
    # The holder keeps its lease for longer than a caller waits (max(30 s, 3 x lease_ttl)):
    # the call fails at once with ActorUnavailableError rather than hanging on.
    a = await open_host("a", lease_ttl=120.0)
    a.address = f"ws://127.0.0.1:{free_port()}/rpc"  # nothing listens there
    await a.get(Account, "x").deposit(5)
    await a._leases.directory.register("a", a.address, 120.0)  # type: ignore[union-attr]
    b = await open_host("b", lease_ttl=1.0)
    with pytest.raises(ActorUnavailableError, match=r"held by host 'a', which does not answer"):
        await b.get(Account, "x").deposit(1)
    assert lease_of(database, "x") == ("a", 1)
    assert await a.get(Account, "x").balance() == 5


async def test_a_host_that_stops_hands_its_actors_over_at_once(
    open_host: Host, database: PostgresDatabase
) -> None:
    a = await open_host("a")
    b = await open_host("b")
    await a.get(Account, "x").deposit(5)
    await a.aclose()
    assert await b.get(Account, "x").deposit(1) == 6
    assert lease_of(database, "x") == ("b", 2)
    assert database.fetch("SELECT stopped_at IS NOT NULL FROM hosts WHERE id = 'a'")[0][0]


async def test_a_turn_under_a_lease_taken_over_meanwhile_is_refused(
    open_host: Host, database: PostgresDatabase
) -> None:
    a = await open_host("a")
    b = await open_host("b")
    await a.get(Account, "x").deposit(5)
    expire_leases(database, "a")  # a stalls past its lease ...
    assert await b.get(Account, "x").deposit(10) == 15  # ... and b takes x over
    # a wakes up still trusting its lease: its turn runs, but its commit is refused.
    with pytest.raises(LeaseLostError, match="no longer holds the actor's lease"):
        await a.get(Account, "x").deposit(100)
    assert await b.get(Account, "x").balance() == 15


async def test_a_host_renewing_finds_out_which_leases_it_lost(
    open_host: Host, database: PostgresDatabase
) -> None:
    a = await open_host("a")
    await a.get(Account, "x").deposit(1)
    await a.get(Account, "y").deposit(1)
    database.execute("UPDATE leases SET host = 'someone-else' WHERE instance = 'x'")
    keeper = a._leases
    assert keeper is not None
    await keeper.renew()
    assert keeper.held() == {("Account", "y")}
    assert a._activations.active("Account", "x") is None  # dropped from memory


async def test_due_continuations_fire_on_the_host_holding_their_actor(
    open_host: Host, database: PostgresDatabase
) -> None:
    clock = ManualClock()
    a = await open_host("a", clock=clock)
    b = await open_host("b", clock=clock)
    await a.get(Account, "x").remind(0)
    await b.drain()  # b cannot take x: a holds it
    assert database.fetch("SELECT status FROM continuations")[0][0] == "pending"
    await a.drain()
    assert await a.get(Account, "x").reminders() == 1


async def test_a_dead_hosts_due_continuations_fire_elsewhere_once_its_lease_expires(
    open_host: Host, database: PostgresDatabase
) -> None:
    clock = ManualClock()
    a = await open_host("a", clock=clock)
    b = await open_host("b", clock=clock)
    await a.get(Account, "x").remind(60)
    expire_leases(database, "a")  # a died
    await b.advance(60)
    assert lease_of(database, "x") == ("b", 2)
    assert await b.get(Account, "x").reminders() == 1
    assert database.fetch("SELECT status FROM continuations")[0][0] == "completed"


async def test_idle_actors_give_their_leases_up(
    open_host: Host, database: PostgresDatabase
) -> None:
    clock = ManualClock()
    a = await open_host("a", clock=clock, idle_timeout=10)
    await a.get(Account, "x").deposit(1)
    await a.advance(11)  # housekeeping evicts x and gives its lease up
    keeper = a._leases
    assert keeper is not None
    await a._store.store.pool.execute("SELECT 1")  # type: ignore[attr-defined]
    for task in list(keeper._releasing):
        await task
    assert lease_of(database, "x") is None
    assert keeper.held() == set()


async def test_the_hosts_command_lists_the_hosts(
    open_host: Host, database: PostgresDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    a = await open_host("a")
    await open_host("b")
    await a.get(Account, "x").deposit(1)
    await a._leases.renew()  # type: ignore[union-attr]
    await a.aclose()
    assert await asyncio.to_thread(run_hosts, argparse.Namespace(db=database.url, json=True)) == 0
    hosts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(h["id"], h["state"]) for h in hosts] == [("b", "alive"), ("a", "stopped")]
    assert await asyncio.to_thread(run_hosts, argparse.Namespace(db=database.url, json=False)) == 0
    table = capsys.readouterr().out
    assert "alive" in table
    assert "stopped" in table


def test_the_hosts_command_refuses_an_sqlite_database() -> None:
    with pytest.raises(ValueError, match="share a PostgreSQL database"):
        run_hosts(argparse.Namespace(db="app.db", json=False))
