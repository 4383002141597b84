"""Remote calls between two hosts: this test's ``ActorSystem`` calls ``Billing`` served by a
second process (``python -m continuation serve``) over RPC, with idempotency keys."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from continuation import (
    Actor,
    ActorSystem,
    Continuation,
    ContinuationStatus,
    ManualClock,
)
from continuation._remote import Remotes
from continuation._work import RemoteCall
from operation_chain import chain_of
from rpc import BindingNotFoundError, HttpTransport, create_rpc_client

from .billing_host import Billing
from .conftest import free_port
from .test_actor_system import _until_listening

HOST = Path(__file__).with_name("billing_host.py")


class Orders(Actor):
    def pay(self, amount: int) -> str:
        c = Continuation(self)
        return self.continue_(
            c.paid(c.result),
            c.failed(c.error),
            strategy="remote-call",
            binding="Billing",
            instance="acme",
            call=Continuation(Billing).charge(amount),
            timeout=30,
        )

    def paid(self, receipt: str) -> None:
        self.storage.put("log", [*self.storage.get("log", []), receipt])

    def failed(self, error: BaseException) -> None:
        self.storage.put("log", [*self.storage.get("log", []), f"{type(error).__name__}: {error}"])

    def log(self) -> list[str]:
        return list(self.storage.get("log", []))


@pytest.fixture
async def billing_url(tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    command = [
        sys.executable, "-m", "continuation", "serve", f"{HOST}:create_system",
        "--port", str(port), "--db", str(tmp_path / "billing.db"), "--log-level", "warning",
    ]  # fmt: skip
    server = subprocess.Popen(command)
    try:
        await _until_listening(port, server)
        yield f"127.0.0.1:{port}/rpc"
    finally:
        server.terminate()
        server.wait(timeout=10)


async def billing_totals(url: str) -> Any:
    async with create_rpc_client("Billing", "acme", transport=HttpTransport(f"http://{url}")) as b:
        return await b.totals()


@pytest.mark.parametrize("scheme", ["ws", "http"])
async def test_a_remote_call_reaches_the_other_host(
    tmp_path: Path, billing_url: str, scheme: str
) -> None:
    remotes = {"Billing": f"{scheme}://{billing_url}"}
    async with ActorSystem(
        tmp_path / "orders.db", actors=[Orders], clock=ManualClock(), remotes=remotes
    ) as system:
        orders = system.get(Orders, "o-1")
        cid = await orders.pay(12)
        failing = await orders.pay(-1)
        await system.drain()
        assert await orders.log() == ["receipt-12", "ValueError: cannot charge -1"]
        assert (await system.continuation(cid)).status == ContinuationStatus.COMPLETED
        assert (await system.continuation(failing)).status == ContinuationStatus.COMPLETED
    assert tuple(await billing_totals(billing_url)) == (12, 1)


async def test_a_call_sent_twice_with_one_key_runs_once(billing_url: str) -> None:
    remotes = Remotes({"Billing": f"ws://{billing_url}"})
    work = RemoteCall("Billing", "acme", chain_of(Continuation(Billing).charge(5)))
    try:
        first = await remotes.call(work, key="cid-1")
        again = await remotes.call(work, key="cid-1")
        other = await remotes.call(work, key="cid-2")
    finally:
        await remotes.aclose()
    assert first == again == other == ("ok", "receipt-5")
    assert tuple(await billing_totals(billing_url)) == (10, 2)


async def test_an_unreachable_host_is_an_error_outcome() -> None:
    remotes = Remotes({"Billing": f"http://127.0.0.1:{free_port()}/rpc"})
    work = RemoteCall("Billing", "acme", chain_of(Continuation(Billing).charge(5)))
    try:
        kind, error = await remotes.call(work, key="k")
    finally:
        await remotes.aclose()
    assert kind == "error"
    assert isinstance(error, Exception)


def test_remote_urls_are_checked() -> None:
    with pytest.raises(ValueError, match="must be ws://, wss://, http:// or https://"):
        Remotes({"Billing": "ftp://host/rpc"})
    with pytest.raises(TypeError, match="remotes must map"):
        Remotes({"Billing": 1})  # type: ignore[dict-item]


async def test_a_call_the_host_refuses_is_a_typed_error(billing_url: str) -> None:
    remotes = Remotes({"Nobody": f"http://{billing_url}"})
    work = RemoteCall("Nobody", "acme", chain_of(Continuation(Billing).charge(5)))
    try:
        kind, error = await remotes.call(work, key="k")
    finally:
        await remotes.aclose()
    assert kind == "error"
    assert isinstance(error, BindingNotFoundError)
