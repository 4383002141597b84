"""The server side of a WebSocket connection, driven frame by frame without a socket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from operation_chain import OperationProxy, chain_of
from rpc import _session
from rpc._batch import chain_form
from rpc._server import RpcServer
from rpc._session import Session

from .host import Counter, FakeHost

p = OperationProxy()


class Peer:
    """The client end: what the session sent, and whether it closed the connection."""

    def __init__(self) -> None:
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed: list[tuple[int, str]] = []
        self.fail = False

    async def send(self, text: str) -> None:
        if self.fail:
            raise ConnectionError("gone")
        await self.sent.put(orjson.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.sent.get(), 5)


@pytest.fixture
def server(host: FakeHost) -> RpcServer:
    return RpcServer(host)


@pytest.fixture
async def session(server: RpcServer) -> AsyncIterator[tuple[Session, Peer]]:
    peer = Peer()
    session = Session(server, "ada", peer.send, peer.close)
    yield session, peer
    await session.aclose()


def call_frame(proxy: OperationProxy, request_id: int = 1, binding: str = "counter") -> bytes:
    batch = {"v": 1, "calls": [{"id": 0, "chain": chain_form(chain_of(proxy))}]}
    frame = {"type": "call", "id": request_id, "binding": binding, "instance": "a", "batch": batch}
    return orjson.dumps(frame)


async def test_a_call_frame_gets_a_reply_with_its_id(session: tuple[Session, Peer]) -> None:
    connection, peer = session
    await connection.receive(call_frame(p.whoami(), 7).decode())
    assert await peer.next() == {
        "type": "reply",
        "id": 7,
        "status": 200,
        "body": {"results": [{"id": 0, "ok": "ada"}]},
    }


async def test_binary_frames_are_read_too(session: tuple[Session, Peer]) -> None:
    connection, peer = session
    await connection.receive(call_frame(p.increment(), 2))
    assert (await peer.next())["body"] == {"results": [{"id": 0, "ok": 1}]}


async def test_a_refused_batch_is_a_reply_with_a_4xx_status(
    session: tuple[Session, Peer],
) -> None:
    connection, peer = session
    await connection.receive(call_frame(p.a(), 3, binding="ghost"))
    reply = await peer.next()
    assert (reply["id"], reply["status"], reply["body"]["error"]["code"]) == (
        3,
        404,
        "unknown_binding",
    )


@pytest.mark.parametrize(
    ("frame", "request_id", "message"),
    [
        (b"nope", None, "the frame is not valid JSON"),
        (b"[]", None, "not a valid frame"),
        (b'{"type": "call", "id": 4}', 4, "call.binding: Field required"),
        (b'{"type": "dance", "id": 5}', 5, "does not match any of the expected tags"),
        (b'{"type": "subscribe", "id": "6", "client_id": "c"}', None, "subscribe.id"),
    ],
)
async def test_an_unreadable_frame_gets_a_400_reply_and_the_session_goes_on(
    session: tuple[Session, Peer], frame: bytes, request_id: int | None, message: str
) -> None:
    connection, peer = session
    await connection.receive(frame)
    reply = await peer.next()
    assert (reply["id"], reply["status"]) == (request_id, 400)
    assert reply["body"]["error"]["code"] == "malformed_request"
    assert message in reply["body"]["error"]["message"]
    await connection.receive(call_frame(p.increment(), 9))
    assert (await peer.next())["status"] == 200


async def test_a_frame_over_the_size_limit_is_refused(host: FakeHost) -> None:
    from operation_chain import ExecutionPolicy

    peer = Peer()
    connection = Session(
        RpcServer(host, policy=ExecutionPolicy(max_encoded_size=10)), None, peer.send, peer.close
    )
    await connection.receive(call_frame(p.increment()))
    reply = await peer.next()
    assert (reply["status"], reply["body"]["error"]["code"]) == (413, "request_too_large")
    await connection.aclose()


async def test_subscriptions_route_downstream_frames_until_unsubscribed(
    session: tuple[Session, Peer], host: FakeHost
) -> None:
    connection, peer = session
    await connection.receive(b'{"type": "subscribe", "id": 1, "client_id": "tab"}')
    assert (await peer.next())["body"] == {"subscribed": "tab"}
    host.send_downstream("counter", "a", ("tab",), "hello")
    assert (await peer.next())["payload"] == "hello"
    await connection.receive(b'{"type": "unsubscribe", "id": 2, "client_id": "tab"}')
    assert (await peer.next())["body"] == {"unsubscribed": "tab"}
    host.send_downstream("counter", "a", ("tab",), "gone")
    assert host.listener_count == 0
    assert peer.sent.empty()


async def test_closing_a_session_cancels_its_batches_and_subscriptions(
    server: RpcServer, host: FakeHost
) -> None:
    peer = Peer()
    connection = Session(server, None, peer.send, peer.close)
    await connection.receive(b'{"type": "subscribe", "id": 1, "client_id": "tab"}')
    await connection.receive(call_frame(p.slow(), 2))
    while not host.chains:
        await asyncio.sleep(0)
    await connection.aclose()
    assert host.listener_count == 0
    assert (await peer.next())["body"] == {"subscribed": "tab"}
    assert peer.sent.empty()  # the slow call was cancelled, never answered


async def test_a_server_failure_is_a_500_reply(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeHost):
        def has_binding(self, binding: str) -> bool:
            raise RuntimeError("host bug")

    peer = Peer()
    connection = Session(RpcServer(Broken(counter=Counter)), None, peer.send, peer.close)
    with caplog.at_level(logging.ERROR, logger="rpc.server"):
        await connection.receive(call_frame(p.increment(), 5))
        reply = await peer.next()
    assert (reply["id"], reply["status"], reply["body"]["error"]["code"]) == (
        5,
        500,
        "internal_error",
    )
    assert "a batch failed inside the RPC server" in caplog.text
    await connection.aclose()


async def test_a_client_that_reads_too_slowly_is_disconnected(
    server: RpcServer, host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_session, "MAX_QUEUED_FRAMES", 3)
    blocked = asyncio.Event()

    async def never_sends(text: str) -> None:
        await blocked.wait()

    peer = Peer()
    connection = Session(server, None, never_sends, peer.close)
    await connection.receive(b'{"type": "subscribe", "id": 1, "client_id": "tab"}')
    for n in range(10):
        host.send_downstream("counter", "a", ("tab",), n)
    while not peer.closed:
        await asyncio.sleep(0)
    assert peer.closed == [(1008, "too many unread messages")]
    await connection.aclose()


async def test_frames_are_dropped_once_the_connection_is_gone(
    server: RpcServer, host: FakeHost
) -> None:
    peer = Peer()
    peer.fail = True
    connection = Session(server, None, peer.send, peer.close)
    await connection.receive(b'{"type": "subscribe", "id": 1, "client_id": "tab"}')
    await connection.receive(call_frame(p.increment()))
    while connection._tasks:
        await asyncio.sleep(0)
    host.send_downstream("counter", "a", ("tab",), "lost")
    assert not connection._tasks  # nothing more is attempted
    await connection.aclose()


async def test_frames_queued_together_leave_in_order(server: RpcServer, host: FakeHost) -> None:
    sent: list[Any] = []

    async def slow_send(text: str) -> None:
        await asyncio.sleep(0)  # a send that yields, as a socket's may
        sent.append(orjson.loads(text).get("payload"))

    peer = Peer()
    connection = Session(server, None, slow_send, peer.close)
    await connection.receive(b'{"type": "subscribe", "id": 1, "client_id": "tab"}')
    for n in range(5):
        host.send_downstream("counter", "a", ("tab",), n)
    while connection._tasks:
        await asyncio.sleep(0)
    assert sent == [None, 0, 1, 2, 3, 4]  # the subscription's reply first, then in order
    await connection.aclose()
