"""End to end over real HTTP: batches, pipelining, errors, limits, refusals, authentication."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.requests import HTTPConnection

from operation_chain import OperationChain, OperationProxy, RemoteError, chain_of
from rpc import (
    AuthenticationError,
    ChainRefusedError,
    HttpTransport,
    TransportError,
    create_rpc_client,
)
from rpc._batch import chain_form
from rpc.server import create_rpc_app

from ..rpc.host import Counter, FakeHost
from .conftest import Counting, Running, free_port, start_server

p = OperationProxy()


def batch_of(*chains: OperationChain) -> dict[str, Any]:
    return {"v": 1, "calls": [{"id": i, "chain": chain_form(c)} for i, c in enumerate(chains)]}


async def test_a_batch_of_20_calls_is_one_request(running: Running, counting: Counting) -> None:
    transport = HttpTransport(running.http_url)
    async with create_rpc_client("counter", "a", transport=transport) as counter:
        results = await asyncio.gather(*[counter.increment() for _ in range(20)])
    assert results == list(range(1, 21))
    assert counting.http_requests == 1


async def test_a_pipelined_chain_is_one_request(
    running: Running, counting: Counting, host: FakeHost
) -> None:
    transport = HttpTransport(running.http_url)
    async with create_rpc_client("counter", "a", transport=transport) as counter:
        x = counter.increment(10)
        assert await asyncio.gather(counter.add(x, 1), counter.add(x, 2)) == [11, 12]
        assert await counter.rooms["lobby"].post("hi") == "lobby: hi"
    assert counting.http_requests == 2
    assert host.chains[:3] == ["increment(10)", "add(10, 1)", "add(10, 2)"]


async def test_errors_in_a_batch_settle_each_call_on_its_own(running: Running) -> None:
    transport = HttpTransport(running.http_url)
    async with create_rpc_client("counter", "a", transport=transport) as counter:
        results = await asyncio.gather(
            counter.increment(),
            counter.fail("bad input"),
            counter.fail_custom(),
            counter.opaque(),
            counter._hidden(),
            counter.increment(),
            return_exceptions=True,
        )
    assert results[0] == 1
    assert isinstance(results[1], ValueError)
    assert "Remote traceback" in results[1].__notes__[0]
    assert isinstance(results[2], RemoteError)
    assert results[2].type_name == "tests.rpc.host.CustomError"
    assert isinstance(results[3], TypeError)
    assert isinstance(results[4], ChainRefusedError)
    assert results[5] == 2


def fifty_one_operations(proxy: Any) -> Any:
    for _ in range(51):
        proxy = proxy.a
    return proxy


def a_hundred_and_one_arguments(proxy: Any) -> Any:
    return proxy.echo(*range(101))


@pytest.mark.parametrize(
    ("build", "message"),
    [(fifty_one_operations, "51 > 50"), (a_hundred_and_one_arguments, "101 > 100")],
)
async def test_a_chain_over_the_limits_is_a_400_and_nothing_runs(
    running: Running, host: FakeHost, build: Callable[[Any], Any], message: str
) -> None:
    async with httpx.AsyncClient() as client:
        body = batch_of(chain_of(build(OperationProxy())))
        response = await client.post(f"{running.http_url}/counter/a", json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "chain_limit"
        assert message in error["message"]
        transport = HttpTransport(running.http_url, client=client)
        async with create_rpc_client("counter", "a", transport=transport) as counter:
            with pytest.raises(ChainRefusedError, match=message):
                await build(counter)
            assert await counter.increment() == 1
    assert host.chains == ["increment()"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/counter/a", b"{", 400, "malformed_request"),
        ("POST", "/counter/a", b'{"v": 1, "calls": [{"id": 0}]}', 400, "malformed_request"),
        ("POST", "/ghost/a", None, 404, "unknown_binding"),
        ("POST", "/counter", None, 404, "not_found"),
        ("POST", "/counter/", None, 404, "not_found"),
        ("GET", "/counter/a", None, 405, "method_not_allowed"),
        ("PUT", "/counter/a", None, 405, "method_not_allowed"),
    ],
)
async def test_bad_requests_get_a_4xx_code_and_the_server_keeps_serving(
    running: Running, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    content = (
        body
        if body is not None
        else httpx.Request("POST", "/", json=batch_of(chain_of(p.a()))).content
    )
    async with httpx.AsyncClient() as client:
        response = await client.request(method, running.http_url + path, content=content)
        assert response.status_code == status
        assert response.json()["error"]["code"] == code
        ok = await client.post(
            f"{running.http_url}/counter/a", json=batch_of(chain_of(p.increment()))
        )
    assert ok.json() == {"results": [{"id": 0, "ok": 1}]}


async def test_authentication_refusal_is_a_401_and_the_principal_reaches_the_actor() -> None:
    def authenticate(request: HTTPConnection) -> str:
        if request.headers.get("authorization") != "Bearer s3cret":
            raise PermissionError("a valid bearer token is required")
        return "ada"

    running = await start_server(
        create_rpc_app(FakeHost(counter=Counter), authenticate=authenticate)
    )
    try:
        anonymous = HttpTransport(running.http_url)
        async with create_rpc_client("counter", "a", transport=anonymous) as counter:
            with pytest.raises(AuthenticationError, match="bearer token is required") as info:
                await counter.whoami()
        assert info.value.status == 401
        signed = HttpTransport(running.http_url, headers={"authorization": "Bearer s3cret"})
        async with create_rpc_client("counter", "a", transport=signed) as counter:
            assert await counter.whoami() == "ada"
    finally:
        await running.stop()


async def test_a_server_that_is_down_is_a_transport_error() -> None:
    transport = HttpTransport(f"http://127.0.0.1:{free_port()}/rpc")
    async with create_rpc_client("counter", "a", transport=transport) as counter:
        with pytest.raises(TransportError, match="failed") as info:
            await counter.increment()
    assert isinstance(info.value.__cause__, httpx.ConnectError)
