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

from .conftest import actor
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


# -- serving a connection: the reading task hands over to the next -----------------------------


class Socket:
    """The ASGI side of a connection: ``receive`` returns the queued messages, then waits."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[dict[str, Any] | Exception] = asyncio.Queue()

    def frame(self, data: bytes, *, text: bool = False) -> None:
        message: dict[str, Any] = {"type": "websocket.receive"}
        message["text" if text else "bytes"] = data.decode() if text else data
        self.messages.put_nowait(message)

    def disconnect(self) -> None:
        self.messages.put_nowait({"type": "websocket.disconnect", "code": 1000})

    async def receive(self) -> dict[str, Any]:
        message = await self.messages.get()
        if isinstance(message, Exception):
            raise message
        return message


async def test_serve_answers_frames_until_the_client_disconnects(server: RpcServer) -> None:
    peer, socket = Peer(), Socket()
    connection = Session(server, "ada", peer.send, peer.close)
    socket.frame(call_frame(p.whoami(), 1), text=True)
    socket.frame(b'{"type": "subscribe", "id": 2, "client_id": "tab"}')
    socket.frame(call_frame(p.increment(), 3))
    socket.disconnect()
    await asyncio.wait_for(connection.serve(socket.receive), 5)
    replies = [await peer.next() for _ in range(3)]
    assert [(reply["id"], reply["status"]) for reply in replies] == [(1, 200), (2, 200), (3, 200)]
    assert replies[0]["body"] == {"results": [{"id": 0, "ok": "ada"}]}
    await connection.aclose()


async def test_a_slow_call_does_not_stop_the_reading(server: RpcServer, host: FakeHost) -> None:
    peer, socket = Peer(), Socket()
    connection = Session(server, None, peer.send, peer.close)
    serving = asyncio.ensure_future(connection.serve(socket.receive))
    socket.frame(call_frame(p.slow("late"), 1))
    other = orjson.loads(call_frame(p.increment(), 2))
    other["instance"] = "b"  # another actor: the slow one holds its own turn
    socket.frame(orjson.dumps(other))
    assert (await peer.next())["id"] == 2
    actor(host).gate.set()
    assert (await peer.next())["body"] == {"results": [{"id": 0, "ok": "late"}]}
    socket.disconnect()
    await asyncio.wait_for(serving, 5)
    await connection.aclose()


async def test_batches_that_never_wait_run_in_order_in_the_one_reading_task(
    server: RpcServer,
) -> None:
    peer, socket = Peer(), Socket()
    connection = Session(server, None, peer.send, peer.close)
    for request_id in (1, 2, 3):
        socket.frame(call_frame(p.task_name(), request_id))
    serving = asyncio.ensure_future(connection.serve(socket.receive))
    replies = [await peer.next() for _ in range(3)]
    assert [reply["id"] for reply in replies] == [1, 2, 3]
    (reader,) = connection._tasks  # no task was made for a frame
    assert {reply["body"]["results"][0]["ok"] for reply in replies} == {reader.get_name()}
    socket.disconnect()
    await asyncio.wait_for(serving, 5)
    await connection.aclose()


async def test_a_reader_running_batches_one_after_another_lets_other_tasks_run(
    server: RpcServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_session, "BATCHES_BETWEEN_YIELDS", 2)
    peer, socket = Peer(), Socket()
    connection = Session(server, None, peer.send, peer.close)
    for request_id in range(1, 6):  # arrived together: reading them never waits
        socket.frame(call_frame(p.increment(), request_id))
    serving = asyncio.ensure_future(connection.serve(socket.receive))
    answered: list[int] = []  # how many replies were out each time another task ran
    while len(answered) < 10 and (not answered or answered[-1] < 5):
        await asyncio.sleep(0)
        answered.append(peer.sent.qsize())
    assert answered[-1] == 5
    assert {2, 4} <= set(answered)  # it let this task run after every second batch
    socket.disconnect()
    await asyncio.wait_for(serving, 5)
    await connection.aclose()


async def test_a_batch_that_waits_leaves_one_reader_once_it_is_done(
    server: RpcServer, host: FakeHost
) -> None:
    peer, socket = Peer(), Socket()
    connection = Session(server, None, peer.send, peer.close)
    serving = asyncio.ensure_future(connection.serve(socket.receive))
    socket.frame(call_frame(p.slow("late"), 1))
    while not host.chains:
        await asyncio.sleep(0)
    actor(host).gate.set()
    assert (await peer.next())["id"] == 1
    for _ in range(5):  # the slow batch's task ends; the reader that took over waits on
        await asyncio.sleep(0)
    assert len(connection._tasks) == 1
    for request_id in (2, 3, 4):
        socket.frame(call_frame(p.task_name(), request_id))
    replies = [await peer.next() for _ in range(3)]
    assert [reply["id"] for reply in replies] == [2, 3, 4]
    assert len({reply["body"]["results"][0]["ok"] for reply in replies}) == 1
    socket.disconnect()
    await asyncio.wait_for(serving, 5)
    await connection.aclose()


async def test_a_failing_receive_ends_serve_with_its_error(server: RpcServer) -> None:
    peer, socket = Peer(), Socket()
    connection = Session(server, None, peer.send, peer.close)
    socket.frame(call_frame(p.increment(), 1))
    socket.messages.put_nowait(RuntimeError("the socket broke"))
    with pytest.raises(RuntimeError, match="the socket broke"):
        await asyncio.wait_for(connection.serve(socket.receive), 5)
    await connection.aclose()


async def test_no_reader_starts_once_the_session_is_closing(server: RpcServer) -> None:
    connection = Session(server, None, Peer().send, Peer().close)
    await connection.aclose()
    connection._read_on()
    assert not connection._tasks


@pytest.mark.parametrize("serving", [False, True], ids=["receive", "serve"])
async def test_call_frames_wait_while_too_many_batches_run(
    server: RpcServer, host: FakeHost, monkeypatch: pytest.MonkeyPatch, serving: bool
) -> None:
    monkeypatch.setattr(_session, "MAX_CONCURRENT_BATCHES", 1)
    peer, socket = Peer(), Socket()
    connection = Session(server, None, peer.send, peer.close)
    other = orjson.loads(call_frame(p.increment(), 2))
    other["instance"] = "b"  # another actor: only the slot holds it back
    if serving:
        task = asyncio.ensure_future(connection.serve(socket.receive))
        socket.frame(call_frame(p.slow("first"), 1))
        socket.frame(orjson.dumps(other))
    else:
        await connection.receive(call_frame(p.slow("first"), 1))
        task = asyncio.ensure_future(connection.receive(orjson.dumps(other)))
    while not host.chains:
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    assert host.chains == ["slow('first')"]  # the second waits for the slot
    actor(host).gate.set()
    assert [(await peer.next())["id"] for _ in range(2)] == [1, 2]
    if serving:
        socket.disconnect()
    await asyncio.wait_for(task, 5)
    await connection.aclose()


async def test_a_reply_that_cannot_be_sent_stops_the_writing(
    server: RpcServer, host: FakeHost
) -> None:
    peer = Peer()
    connection = Session(server, None, peer.send, peer.close)
    await connection.receive(b'{"type": "subscribe", "id": 1, "client_id": "tab"}')
    await peer.next()
    peer.fail = True
    await connection.receive(call_frame(p.increment(), 2))
    while connection._tasks:
        await asyncio.sleep(0)
    host.send_downstream("counter", "a", ("tab",), "lost")
    assert not connection._tasks  # nothing more is attempted
    assert peer.sent.empty()
    await connection.aclose()


async def test_frames_queued_while_a_reply_is_sent_follow_it(
    server: RpcServer, host: FakeHost
) -> None:
    sent: list[Any] = []
    release = asyncio.Event()

    async def slow_send(text: str) -> None:
        frame = orjson.loads(text)
        if frame.get("id") == 2:
            await release.wait()  # the reply is on its way out when the message comes
        sent.append(frame.get("payload", frame.get("id")))

    connection = Session(server, None, slow_send, Peer().close)
    await connection.receive(b'{"type": "subscribe", "id": 1, "client_id": "tab"}')
    await connection.receive(call_frame(p.increment(), 2))
    while len(sent) < 1 or not host.chains:
        await asyncio.sleep(0)
    host.send_downstream("counter", "a", ("tab",), "after")
    release.set()
    while connection._tasks:
        await asyncio.sleep(0)
    assert sent == [1, 2, "after"]
    await connection.aclose()


async def test_a_call_frame_in_a_form_the_quick_reader_declines_is_still_answered(
    session: tuple[Session, Peer],
) -> None:
    connection, peer = session
    frame = orjson.loads(call_frame(p.increment(), 4))
    frame["batch"]["v"] = 1.0  # pydantic's Literal[1] accepts it; the quick reader does not
    await connection.receive(orjson.dumps(frame))
    assert (await peer.next())["body"] == {"results": [{"id": 0, "ok": 1}]}


@pytest.mark.parametrize("end", ["disconnect", "error"])
async def test_a_reader_outliving_a_cancelled_serve_ends_quietly(
    server: RpcServer, end: str
) -> None:
    peer, socket = Peer(), Socket()
    connection = Session(server, None, peer.send, peer.close)
    serving = asyncio.ensure_future(connection.serve(socket.receive))
    await asyncio.sleep(0)
    serving.cancel()  # and no aclose(): the reader is still waiting for a frame
    with pytest.raises(asyncio.CancelledError):
        await serving
    if end == "disconnect":
        socket.disconnect()
    else:
        socket.messages.put_nowait(RuntimeError("the socket broke"))
    while connection._tasks:
        await asyncio.sleep(0)
    await connection.aclose()
