"""WebSocketTransport against scripted peers on 127.0.0.1: odd frames from the server,
refused and failing handshakes, connections that die under a request, closing.

The well-behaved server is exercised end to end in ``tests/e2e/test_websocket.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from rpc import (
    AuthenticationError,
    ConnectionLostError,
    DownstreamMessage,
    RpcRequest,
    RpcResponse,
    TransportError,
    WebSocketTransport,
)
from rpc._transports.websocket import _Connection, _deliver, _read_reply

Handler = Callable[[ServerConnection], Awaitable[None]]
REQUEST = RpcRequest("counter", "a", {"v": 1, "calls": []})
FAST: dict[str, Any] = {"backoff_base": 0.005, "backoff_max": 0.01}


def reply(frame: dict[str, Any], body: dict[str, Any], status: int = 200) -> str:
    return orjson.dumps(
        {"type": "reply", "id": frame["id"], "status": status, "body": body}
    ).decode()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers = []

    async def start(handler: Handler) -> str:
        server = await serve(handler, "127.0.0.1", 0)
        servers.append(server)
        port = next(iter(server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/rpc"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_odd_frames_from_the_server_are_ignored_or_logged(
    scripted: Callable[[Handler], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            frame = orjson.loads(message)
            if frame["type"] == "subscribe":
                await ws.send(reply(frame, {"subscribed": frame["client_id"]}))
                continue
            await ws.send("not json at all")
            await ws.send(reply({"id": 999}, {"results": []}))
            await ws.send(reply({"id": None}, {"error": {"code": "x"}}, status=400))
            downstream = {"type": "downstream", "binding": "b", "instance": "i"}
            bad = {**downstream, "client_ids": ["c"], "payload": {"$obj": ["nope", {}]}}
            await ws.send(orjson.dumps(bad).decode())
            good = {**downstream, "client_ids": ["c", "x"], "payload": [1]}
            await ws.send(orjson.dumps(good).decode())
            await ws.send(reply(frame, {"results": []}))
            return  # closes normally

    received: list[DownstreamMessage] = []

    def fragile(message: DownstreamMessage) -> None:
        raise RuntimeError("listener bug")

    transport = WebSocketTransport(await scripted(handler))
    closed = asyncio.Event()
    lost = transport._lost

    def note_lost(conn: Any) -> None:  # the transport reconnects at once: catch the moment
        lost(conn)
        closed.set()

    transport._lost = note_lost  # type: ignore[method-assign]
    await transport.subscribe("c", received.append)
    await transport.subscribe("c", fragile)
    with caplog.at_level(logging.INFO, logger="rpc.client"):
        response = await transport.handle_async_request(REQUEST)
    assert (response.status, response.payload) == (200, {"results": []})
    assert received == [DownstreamMessage("b", "i", ("c", "x"), [1])]
    logged = caplog.text
    assert "ignored a frame from" in logged
    assert "refused a frame" in logged
    assert "could not be decoded" in logged
    assert "a downstream listener raised" in logged
    await closed.wait()  # the server closed the connection normally
    await transport.aclose()


async def test_a_server_error_at_the_handshake_is_retried_until_the_caller_gives_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts = 0

    async def answer_503(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_503, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = WebSocketTransport(f"ws://127.0.0.1:{port}/rpc", **FAST)
    with caplog.at_level(logging.INFO, logger="rpc.client"), pytest.raises(TimeoutError):
        await asyncio.wait_for(transport.handle_async_request(REQUEST), 0.2)
    assert attempts >= 2
    assert "retry in" in caplog.text
    # Nobody waits any more, so the next failed attempt is the last.
    connecting = transport._connecting
    assert connecting is not None
    with pytest.raises(TransportError, match="could not connect to"):
        await connecting
    await transport.aclose()
    server.close()
    await server.wait_closed()


async def test_a_refused_handshake_stops_reconnecting_subscribers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def answer_403(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_403, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = WebSocketTransport(f"ws://127.0.0.1:{port}/rpc")
    transport._listeners["c"] = [print]  # as after a subscription, when the server went away
    connecting = transport._ensure_connecting()
    with pytest.raises(TransportError, match="HTTP 403"):
        await connecting
    assert "gave up connecting" in caplog.text
    await transport.aclose()
    server.close()
    await server.wait_closed()


class DeadConnection:
    """A connection that closed before the request could be sent."""

    def __init__(self, code: int) -> None:
        self.close_code = code
        self.close_reason = "gone"

    async def send(self, message: str) -> None:
        raise ConnectionClosed(None, None)


async def test_a_request_not_sent_because_the_connection_died_is_sent_again(
    scripted: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(reply(orjson.loads(message), {"results": ["fresh"]}))

    transport = WebSocketTransport(await scripted(handler))
    transport._conn = DeadConnection(1006)  # type: ignore[assignment]
    response = await transport.handle_async_request(REQUEST)
    assert response.payload == {"results": ["fresh"]}
    await transport.aclose()


async def test_a_request_whose_connections_keep_dying_fails() -> None:
    transport = WebSocketTransport("ws://127.0.0.1:9/rpc")

    async def dead(code: int) -> Any:
        return DeadConnection(code)

    transport._connection = lambda: dead(1006)  # type: ignore[method-assign]
    with pytest.raises(ConnectionLostError, match="code 1006: gone"):
        await transport.handle_async_request(REQUEST)
    transport._connection = lambda: dead(4401)  # type: ignore[method-assign]
    with pytest.raises(AuthenticationError, match="gone"):
        await transport.handle_async_request(REQUEST)


async def test_closing_the_transport_rejects_requests_in_flight(
    scripted: Callable[[Handler], Awaitable[str]],
) -> None:
    received = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        async for _ in ws:
            received.set()  # and never answer

    transport = WebSocketTransport(await scripted(handler))
    request = asyncio.ensure_future(transport.handle_async_request(REQUEST))
    await received.wait()
    await transport.aclose()
    with pytest.raises(TransportError, match="was closed"):
        await request


async def test_unsubscribing_sends_an_unsubscribe_once_the_last_listener_leaves(
    scripted: Callable[[Handler], Awaitable[str]],
) -> None:
    frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            frame = orjson.loads(message)
            await frames.put(frame)
            await ws.send(reply(frame, {}))

    transport = WebSocketTransport(await scripted(handler))
    first = await transport.subscribe("c", print)
    second = await transport.subscribe("c", repr)
    first()
    first()  # twice: nothing more happens
    second()
    kinds = [(await frames.get())["type"] for _ in range(3)]
    assert kinds == ["subscribe", "subscribe", "unsubscribe"]
    assert transport._listeners == {}
    await transport.aclose()


async def test_a_reply_for_a_request_that_stopped_waiting_is_dropped() -> None:
    transport = WebSocketTransport("ws://127.0.0.1:9/rpc")
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.cancel()
    transport._pending[5] = (None, future)  # type: ignore[assignment]
    transport._dispatch(reply({"id": 5}, {"results": []}))
    assert future.cancelled()


@pytest.mark.parametrize("url", ["ws://:80/rpc", "ws://host:port/rpc", "ws://[::1/rpc"])
def test_a_malformed_url_is_refused_at_once(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        WebSocketTransport(url)


@pytest.mark.parametrize(
    "frame",
    [
        b"[]",
        b'{"type": "reply", "id": "1", "status": 200, "body": {}}',
        b'{"type": "reply", "id": 1, "status": "200", "body": {}}',
        b'{"type": "reply", "id": 1, "status": 200, "body": []}',
        b'{"type": "reply", "id": 1, "status": 200}',
    ],
)
def test_only_well_formed_replies_are_read_as_replies(frame: bytes) -> None:
    assert _read_reply(frame) is None


def test_a_reply_is_read_with_its_id_status_and_body() -> None:
    assert _read_reply('{"type": "reply", "id": null, "status": 400, "body": {}}') == (
        None,
        400,
        {},
    )


async def test_a_reply_sent_in_fragments_is_put_together(
    scripted: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            text = reply(orjson.loads(message), {"results": ["in", "parts"]})
            await ws.send([text[:10], text[10:20], text[20:]])  # one message, three frames

    transport = WebSocketTransport(await scripted(handler))
    response = await transport.handle_async_request(REQUEST)
    assert response.payload == {"results": ["in", "parts"]}
    await transport.aclose()


async def test_a_failure_handling_a_frame_is_logged_and_the_connection_stays(
    scripted: Callable[[Handler], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            frame = orjson.loads(message)
            await ws.send(reply(frame, {"results": [frame["batch"]["calls"]]}))

    transport = WebSocketTransport(await scripted(handler))
    await transport.handle_async_request(REQUEST)
    conn = transport._conn
    assert isinstance(conn, _Connection)

    def broken(data: bytes) -> None:
        raise RuntimeError("handler bug")

    conn.on_message = broken
    with caplog.at_level(logging.ERROR, logger="rpc.client"), pytest.raises(TimeoutError):
        await asyncio.wait_for(transport.handle_async_request(REQUEST), 0.1)
    assert "handling a message from the server failed" in caplog.text
    conn.on_message = transport._dispatch
    assert (await transport.handle_async_request(REQUEST)).status == 200
    assert transport._conn is conn
    await transport.aclose()


def test_an_answer_callback_that_raises_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken(answer: object) -> None:
        raise RuntimeError("client bug")

    with caplog.at_level(logging.ERROR, logger="rpc.client"):
        _deliver(broken, RpcResponse(200, {}))
    assert "handling the answer to a request failed" in caplog.text


class StuckConnection:
    """A connection whose send never finishes."""

    close_code = None

    async def send(self, message: bytes) -> None:
        await asyncio.Event().wait()


async def test_a_request_cancelled_while_it_is_sent_leaves_nothing_pending() -> None:
    transport = WebSocketTransport("ws://127.0.0.1:9/rpc")
    transport._conn = StuckConnection()  # type: ignore[assignment]
    request = asyncio.ensure_future(transport.handle_async_request(REQUEST))
    while not transport._pending:
        await asyncio.sleep(0)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert transport._pending == {}
    assert transport._sending == set()


class DroppedWhileSending:
    """A connection that drops while the frame is being sent, after it left."""

    close_code = 1006
    close_reason = ""

    def __init__(self, transport: WebSocketTransport) -> None:
        self.transport = transport

    async def send(self, message: bytes) -> None:
        self.transport._lost(self)  # type: ignore[arg-type]


async def test_a_connection_lost_just_after_sending_fails_the_request_once() -> None:
    transport = WebSocketTransport("ws://127.0.0.1:9/rpc")
    transport._conn = DroppedWhileSending(transport)  # type: ignore[assignment]
    answers: list[object] = []
    stop = await transport._start_request(REQUEST, answers.append)
    (answer,) = answers
    assert isinstance(answer, ConnectionLostError)
    assert transport._pending == {}
    stop()  # nothing left to stop


async def test_a_request_is_written_at_once_only_on_an_open_connection_with_room(
    scripted: Callable[[Handler], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(reply(orjson.loads(message), {"results": []}))

    transport = WebSocketTransport(await scripted(handler))
    answered = asyncio.Event()
    answers: list[object] = []

    def on_answer(answer: object) -> None:
        answers.append(answer)
        answered.set()

    assert transport._start_request_now(REQUEST, on_answer) is None  # not connected yet
    await transport.handle_async_request(REQUEST)
    conn = transport._conn
    assert isinstance(conn, _Connection)
    with monkeypatch.context() as patched:  # a backlog the server has not read yet
        patched.setattr(conn.transport, "get_write_buffer_size", lambda: 1)
        assert transport._start_request_now(REQUEST, on_answer) is None
    with monkeypatch.context() as patched:  # a close frame came, the socket is still open
        patched.setattr(conn.protocol, "state", State.CLOSING)
        assert transport._start_request_now(REQUEST, on_answer) is None
    assert transport._pending == {}
    stop = transport._start_request_now(REQUEST, on_answer)
    assert stop is not None
    await asyncio.wait_for(answered.wait(), 5)
    assert answers == [RpcResponse(200, {"results": []})]
    assert transport._pending == {}
    await conn.close()
    assert not conn.send_now(b"{}")  # closed: send() would raise ConnectionClosed
    await transport.aclose()
    assert transport._start_request_now(REQUEST, on_answer) is None


async def test_a_connection_lost_after_a_request_was_written_at_once_fails_it(
    scripted: Callable[[Handler], Awaitable[str]],
) -> None:
    received = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        async for _ in ws:
            received.set()
            await ws.close(1011, "gone")  # after reading it, and without an answer

    transport = WebSocketTransport(await scripted(handler))
    await transport._connection()
    answers: list[object] = []
    lost = asyncio.Event()

    def on_answer(answer: object) -> None:
        answers.append(answer)
        lost.set()

    stop = transport._start_request_now(REQUEST, on_answer)
    assert stop is not None
    await asyncio.wait_for(lost.wait(), 5)
    (answer,) = answers
    assert isinstance(answer, ConnectionLostError)
    assert "may or may not have run" in str(answer)
    assert received.is_set()
    await transport.aclose()
