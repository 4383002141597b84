"""End to end over a real WebSocket: one shared connection, batches, pipelining, downstream,
authentication, unreadable frames, and reconnection after the server restarts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from starlette.requests import HTTPConnection
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from operation_chain import OperationProxy, chain_of
from rpc import (
    AuthenticationError,
    ChainRefusedError,
    ConnectionLostError,
    DownstreamMessage,
    RpcRequest,
    TransportError,
    WebSocketTransport,
    create_rpc_client,
)
from rpc._batch import chain_form
from rpc.server import create_rpc_app

from ..rpc.host import Counter, FakeHost
from .conftest import Counting, Running, free_port, start_server

FAST_BACKOFF: dict[str, Any] = {"backoff_base": 0.01, "backoff_max": 0.05}


class Inbox:
    """An ``on_downstream`` that the test can wait on, without sleeping."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[DownstreamMessage] = asyncio.Queue()

    def __call__(self, message: DownstreamMessage) -> None:
        self.messages.put_nowait(message)

    async def next(self) -> Any:
        return (await asyncio.wait_for(self.messages.get(), 5)).payload


async def test_a_batch_of_20_calls_is_one_frame(running: Running, counting: Counting) -> None:
    transport = WebSocketTransport(running.ws_url)
    async with create_rpc_client("counter", "a", transport=transport) as counter:
        assert await asyncio.gather(*[counter.increment() for _ in range(20)]) == list(range(1, 21))
    assert counting.frames == 1


async def test_a_pipelined_chain_is_one_frame(
    running: Running, counting: Counting, host: FakeHost
) -> None:
    transport = WebSocketTransport(running.ws_url)
    async with create_rpc_client("counter", "a", transport=transport) as counter:
        value = counter.increment()
        for step in range(4):
            value = counter.add(value, step)
        box = counter.opaque()
        assert await asyncio.gather(value, counter.read(box), counter.read(box)) == [7, 1, 1]
    assert counting.frames == 1


async def test_concurrent_callers_share_one_connection(
    running: Running, counting: Counting, host: FakeHost
) -> None:
    transport = WebSocketTransport(running.ws_url)
    first = create_rpc_client("counter", "a", transport=transport)
    second = create_rpc_client("counter", "b", transport=transport)
    async with first as a, second as b:
        blocked = asyncio.ensure_future(a.slow("late"))
        while "slow('late')" not in host.chains:
            await asyncio.sleep(0)
        # Actor "a" is busy; "b" answers meanwhile on the same connection.
        results = await asyncio.gather(b.increment(), b.fail(), b._x(), return_exceptions=True)
        assert results[0] == 1
        assert isinstance(results[1], ValueError)
        assert isinstance(results[2], ChainRefusedError)
        host.actor("counter", "a").gate.set()
        assert await blocked == "late"
        await first.aclose()
        assert await b.increment() == 2  # the transport outlives the first client
    # slow; the batch of three, then its two valid calls again after the refusal; increment.
    assert (counting.connections, counting.frames) == (1, 4)


async def test_downstream_reaches_every_connection_of_a_client_id(
    running: Running, counting: Counting
) -> None:
    inboxes = [Inbox(), Inbox(), Inbox()]
    clients = [
        create_rpc_client(
            "counter",
            "a",
            transport=WebSocketTransport(running.ws_url),
            client_id=client_id,
            on_downstream=inbox,
        )
        for client_id, inbox in zip(["tab", "tab", "other"], inboxes, strict=True)
    ]
    proxies = [await client.__aenter__() for client in clients]
    try:
        assert await proxies[2].notify("tab", {"text": "hello"}) == "sent"
        assert await inboxes[0].next() == {"text": "hello"}
        assert await inboxes[1].next() == {"text": "hello"}
        await proxies[0].notify(["other"], "just you")
        assert await inboxes[2].next() == "just you"
        assert inboxes[2].messages.empty()
    finally:
        for client in clients:
            await client.aclose()


async def test_downstream_leaves_only_after_the_call_commits(running: Running) -> None:
    inbox = Inbox()
    transport = WebSocketTransport(running.ws_url)
    async with create_rpc_client(
        "counter", "a", transport=transport, client_id="tab", on_downstream=inbox
    ) as counter:
        with pytest.raises(RuntimeError, match="rolled back"):
            await counter.notify_then_fail("tab")
        await counter.notify("tab", "committed")
        assert await inbox.next() == "committed"
        assert inbox.messages.empty()


async def test_an_exception_in_on_downstream_does_not_break_the_connection(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()

    def fragile(message: DownstreamMessage) -> None:
        if message.payload == "bad":
            raise RuntimeError("handler bug")
        inbox(message)

    transport = WebSocketTransport(running.ws_url)
    async with create_rpc_client(
        "counter", "a", transport=transport, client_id="tab", on_downstream=fragile
    ) as counter:
        await counter.notify("tab", "bad")
        await counter.notify("tab", "good")
        assert await inbox.next() == "good"
        assert await counter.increment() == 1
    assert "on_downstream raised" in caplog.text


async def test_a_refused_websocket_is_closed_with_4401() -> None:
    def authenticate(websocket: HTTPConnection) -> str:
        if websocket.headers.get("authorization") != "Bearer s3cret":
            raise PermissionError("a valid bearer token is required")
        return "ada"

    running = await start_server(
        create_rpc_app(FakeHost(counter=Counter), authenticate=authenticate)
    )
    try:
        async with connect(running.ws_url) as raw:
            with pytest.raises(ConnectionClosed):
                await raw.recv()
        assert raw.close_code == 4401
        assert raw.close_reason == "a valid bearer token is required"

        anonymous = WebSocketTransport(running.ws_url, **FAST_BACKOFF)
        async with create_rpc_client("counter", "a", transport=anonymous) as counter:
            with pytest.raises(AuthenticationError, match="bearer token") as info:
                await counter.whoami()
        assert (info.value.code, info.value.status) == ("unauthenticated", 401)

        refused = create_rpc_client(
            "counter",
            "a",
            transport=WebSocketTransport(running.ws_url),
            on_downstream=print,
        )
        with pytest.raises(AuthenticationError):
            async with refused:
                pass

        signed = WebSocketTransport(running.ws_url, headers={"authorization": "Bearer s3cret"})
        async with create_rpc_client("counter", "a", transport=signed) as counter:
            assert await counter.whoami() == "ada"
    finally:
        await running.stop()


async def test_unreadable_frames_get_400_replies_and_the_connection_stays_open(
    running: Running,
) -> None:
    good = {
        "type": "call",
        "id": 3,
        "binding": "counter",
        "instance": "a",
        "batch": {
            "v": 1,
            "calls": [{"id": 0, "chain": chain_form(chain_of(OperationProxy().increment()))}],
        },
    }
    async with connect(running.ws_url) as raw:
        for frame in ["not json", "[]", '{"type": "call", "id": 1}', b"\xff"]:
            await raw.send(frame)
            reply = orjson.loads(await raw.recv())
            assert reply["status"] == 400
            assert reply["body"]["error"]["code"] == "malformed_request"
        await raw.send(orjson.dumps(good).decode())
        assert orjson.loads(await raw.recv())["body"] == {"results": [{"id": 0, "ok": 1}]}


async def test_the_handshake_at_a_wrong_path_is_a_transport_error(running: Running) -> None:
    transport = WebSocketTransport(running.ws_url + "/nowhere")
    async with create_rpc_client("counter", "a", transport=transport) as counter:
        with pytest.raises(TransportError, match="refused the WebSocket handshake"):
            await counter.increment()


async def test_a_server_that_never_comes_up_fails_the_call_by_its_timeout() -> None:
    transport = WebSocketTransport(f"ws://127.0.0.1:{free_port()}/rpc", **FAST_BACKOFF)
    async with create_rpc_client("counter", "a", transport=transport, timeout=0.2) as counter:
        with pytest.raises(TimeoutError):
            await counter.increment()


@pytest.fixture
async def restartable(counting: Counting) -> AsyncIterator[list[Running]]:
    servers = [await start_server(counting)]
    yield servers
    for server in servers:
        if not server.task.done():
            await server.stop()


async def test_the_client_reconnects_after_the_server_restarts(
    restartable: list[Running], counting: Counting, host: FakeHost
) -> None:
    first = restartable[0]
    inbox = Inbox()
    transport = WebSocketTransport(first.ws_url, **FAST_BACKOFF)
    async with create_rpc_client(
        "counter", "a", transport=transport, client_id="tab", on_downstream=inbox
    ) as counter:
        assert await counter.increment() == 1
        in_flight = asyncio.ensure_future(counter.slow("never answered"))
        while "slow('never answered')" not in host.chains:
            await asyncio.sleep(0)
        await first.stop()
        with pytest.raises(ConnectionLostError, match=r"closed \(code 1012"):
            await in_flight

        restartable.append(await start_server(counting, port=first.port))
        assert await counter.increment() == 2  # the actor lives on in the host
        await counter.notify("tab", "subscribed again")  # the subscription was renewed
        assert await inbox.next() == "subscribed again"


async def test_calls_made_while_the_server_is_down_wait_for_it(
    restartable: list[Running], counting: Counting
) -> None:
    first = restartable[0]
    transport = WebSocketTransport(first.ws_url, **FAST_BACKOFF)
    async with create_rpc_client("counter", "a", transport=transport) as counter:
        assert await counter.increment() == 1
        await first.stop()
        waiting = asyncio.ensure_future(counter.increment())
        restartable.append(await start_server(counting, port=first.port))
        assert await asyncio.wait_for(waiting, 5) == 2


async def test_a_closed_transport_refuses_requests(running: Running) -> None:
    transport = WebSocketTransport(running.ws_url)
    client = create_rpc_client("counter", "a", transport=transport)
    assert await client.proxy.increment() == 1
    await client.aclose()
    await transport.aclose()  # idempotent
    with pytest.raises(TransportError, match="is closed"):
        await transport.handle_async_request(RpcRequest("counter", "a", {}))
