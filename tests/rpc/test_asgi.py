"""The Starlette app over HTTP, driven through httpx's ASGI transport (no sockets): routes,
JSON refusals, authentication, size limits and mounting."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.routing import Mount

from operation_chain import ExecutionPolicy, OperationProxy, chain_of
from rpc import (
    AuthenticationError,
    HttpTransport,
    InProcessTransport,
    create_rpc_client,
)
from rpc._batch import chain_form
from rpc.server import create_rpc_app

from .host import Counter, FakeHost

p = OperationProxy()
BATCH = {"v": 1, "calls": [{"id": 0, "chain": chain_form(chain_of(p.increment()))}]}


def http(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
async def client(host: FakeHost) -> AsyncIterator[httpx.AsyncClient]:
    async with http(create_rpc_app(host)) as client:
        yield client


async def test_a_batch_is_posted_to_binding_and_instance(client: httpx.AsyncClient) -> None:
    response = await client.post("/rpc/counter/a", json=BATCH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"results": [{"id": 0, "ok": 1}]}


async def test_a_wrong_method_is_a_json_405(client: httpx.AsyncClient) -> None:
    response = await client.get("/rpc/counter/a")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"] == {
        "code": "method_not_allowed",
        "message": "GET is not allowed here; use POST",
    }


async def test_an_unknown_path_is_a_json_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/elsewhere", json=BATCH)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_a_malformed_body_is_a_400_and_the_app_keeps_serving(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/rpc/counter/a", content=b"\xff\xfe")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_request"
    assert (await client.post("/rpc/counter/a", json=BATCH)).status_code == 200


async def test_a_body_over_the_limit_is_refused_before_it_is_read(host: FakeHost) -> None:
    app = create_rpc_app(host, policy=ExecutionPolicy(max_encoded_size=100))

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 20

    async with http(app) as client:
        declared = await client.post("/rpc/counter/a", content=b"x" * 101)
        streamed = await client.post("/rpc/counter/a", content=chunks())
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_authenticate_refusals_are_401_and_principals_reach_the_actor(
    host: FakeHost, asynchronous: bool
) -> None:
    def check(connection: HTTPConnection) -> str:
        token = connection.headers.get("authorization", "")
        if token != "Bearer good":
            raise PermissionError("bad token" if token else "")
        return "ada"

    async def check_async(connection: HTTPConnection) -> str:
        return check(connection)

    app = create_rpc_app(host, authenticate=check_async if asynchronous else check)
    async with http(app) as client:
        refused = await client.post("/rpc/counter/a", json=BATCH)
        wrong = await client.post("/rpc/counter/a", json=BATCH, headers={"authorization": "x"})
        headers = {"authorization": "Bearer good"}
        transport = HttpTransport("http://test/rpc", headers=headers, client=client)
        async with create_rpc_client("counter", "a", transport=transport) as counter:
            assert await counter.whoami() == "ada"
        bad = HttpTransport("http://test/rpc", client=client)
        async with create_rpc_client("counter", "a", transport=bad) as counter:
            with pytest.raises(AuthenticationError) as info:
                await counter.whoami()
    assert refused.status_code == 401
    assert refused.json()["error"] == {
        "code": "unauthenticated",
        "message": "authentication failed",
    }
    assert wrong.json()["error"]["message"] == "bad token"
    assert (info.value.code, info.value.status) == ("unauthenticated", 401)
    assert host.chains == ["whoami()"]


async def test_a_failure_inside_the_server_is_a_json_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(FakeHost):
        def has_binding(self, binding: str) -> bool:
            raise RuntimeError("host bug")

    async with http(create_rpc_app(Broken(counter=Counter))) as client:
        with caplog.at_level(logging.ERROR, logger="rpc.server"):
            response = await client.post("/rpc/counter/a", json=BATCH)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "an HTTP request failed inside the RPC server" in caplog.text


async def test_the_app_mounts_inside_another_starlette_app(host: FakeHost) -> None:
    parent = Starlette(routes=[Mount("/api", app=create_rpc_app(host))])
    async with http(parent) as client:
        transport = HttpTransport("http://test/api/rpc", client=client)
        async with create_rpc_client("counter", "user/1", transport=transport) as counter:
            assert await counter.increment() == 1
        assert (await client.get("/api/rpc/x/y")).status_code == 405
    assert list(host.actors) == [("counter", "user/1")]


async def test_an_empty_prefix_serves_at_the_root(host: FakeHost) -> None:
    async with http(create_rpc_app(host, prefix="")) as client:
        response = await client.post("/counter/a", json=BATCH)
    assert response.json() == {"results": [{"id": 0, "ok": 1}]}


@pytest.mark.parametrize("prefix", ["rpc", "/rpc/"])
def test_a_prefix_must_start_and_not_end_with_a_slash(host: FakeHost, prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix must start with '/'"):
        create_rpc_app(host, prefix=prefix)


def test_the_app_needs_an_actor_host() -> None:
    with pytest.raises(TypeError, match="needs an ActorHost"):
        create_rpc_app(object())  # type: ignore[arg-type]


async def test_in_process_transport_uses_the_apps_settings(host: FakeHost) -> None:
    app = create_rpc_app(host, redact_tracebacks=True)
    async with create_rpc_client("counter", "a", transport=InProcessTransport(app)) as counter:
        with pytest.raises(ValueError, match="boom") as info:
            await counter.fail()
    assert not hasattr(info.value, "__notes__")


def test_in_process_transport_needs_the_rpc_app_or_a_host(host: FakeHost) -> None:
    parent = Starlette(routes=[Mount("/api", app=create_rpc_app(host))])
    with pytest.raises(TypeError, match="takes the app that create_rpc_app returned"):
        InProcessTransport(parent)
    with pytest.raises(TypeError, match="needs an ActorHost"):
        InProcessTransport(object())  # type: ignore[arg-type]
