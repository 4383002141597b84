"""One server-side WebSocket connection, independent of the web framework that carries it.

The session reads client frames (see ``_messages``), handles subscriptions in arrival order,
runs each batch in the task that read it (a batch that has to wait hands the reading on to a
new task, so a slow actor does not hold up the others), and writes every outgoing frame
(replies and downstream messages) through one queue, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Final

import orjson
from pydantic import ValidationError

from ._messages import (
    CLIENT_FRAME,
    INTERNAL_ERROR,
    MALFORMED_REQUEST,
    CallFrame,
    SubscribeFrame,
    WireCallFields,
    calls_of,
    describe_validation_error,
    parse_json,
    read_call_frame,
    refusal_body,
)
from ._server import Refused, RpcServer

logger = logging.getLogger("rpc.server")

MAX_CONCURRENT_BATCHES: Final = 256
"""Batches one connection may have running at once; past this, its frames wait unread."""

BATCHES_BETWEEN_YIELDS: Final = 16
"""Batches a reader runs one after another before it lets other tasks run once: frames that
arrived together are read without waiting, and a burst of quick batches on one connection
would otherwise hold the event loop until the last is answered."""

MAX_QUEUED_FRAMES: Final = 4096
"""Outgoing frames a connection may have waiting; past this the client is too slow to keep."""

SLOW_CONSUMER_CLOSE_CODE: Final = 1008

CallFields = tuple[int, str, str, list[WireCallFields]]
"""A call frame's ``(id, binding, instance, calls)``."""


class Session:
    """A WebSocket connection's state on the server.

    Args:
        server: the dispatcher.
        principal: what ``authenticate`` returned for the connection.
        send: sends one text frame.
        close: closes the connection with a code and a reason.
    """

    _receive: Callable[[], Awaitable[Mapping[str, Any]]]  # set by serve()
    _ended: asyncio.Future[None]  # set by serve(): done when the client disconnects

    def __init__(
        self,
        server: RpcServer,
        principal: Any,
        send: Callable[[str], Awaitable[None]],
        close: Callable[[int, str], Coroutine[Any, Any, None]],
    ) -> None:
        self._server = server
        self._principal = principal
        self._send = send
        self._close = close
        self._client_ids: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._batches = 0  # running now
        self._slot_freed: asyncio.Future[None] | None = None  # the reader waits for a slot
        self._successor: asyncio.Handle | None = None  # starts the next reader, if it runs
        self._outbox: deque[bytes] = deque()
        self._writing = False  # a task is sending the outbox
        self._stopped = False  # the connection failed, or the client read too slowly
        self._closing = False  # aclose() was called

    async def serve(self, receive: Callable[[], Awaitable[Mapping[str, Any]]]) -> None:
        """Read frames with ``receive`` (it returns ASGI WebSocket messages) and handle them,
        until the client disconnects; then return, leaving ``aclose`` to the caller.

        A call frame runs in the task that read it, so the answer never waits for a task
        switch; should the batch wait, a new task reads on meanwhile (see ``_run_here``), so a
        slow batch never stops the reading.
        """
        self._receive = receive
        self._ended = asyncio.get_running_loop().create_future()
        self._spawn(self._reader())
        await self._ended

    async def receive(self, data: str | bytes) -> None:
        """Handle one frame from the client; a call runs in a task of its own."""
        call = self._read_frame(data)
        if call is not None:
            if self._batches >= MAX_CONCURRENT_BATCHES:
                await self._slot_freed_up()
            self._batches += 1
            self._spawn(self._run(*call))

    async def _reader(self) -> None:
        """The reading task: read frames, and run each call frame's batch here (see
        ``_run_here``), until the end of the connection or a batch that waited."""
        streak = 0  # batches run here one after another
        try:
            while True:
                message = await self._receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                call = self._read_frame(text if text is not None else message.get("bytes") or b"")
                if call is None:
                    continue
                if not await self._run_here(call):
                    return
                streak += 1
                if streak == BATCHES_BETWEEN_YIELDS:
                    streak = 0
                    await asyncio.sleep(0)
        except Exception as exc:
            if not self._ended.done():
                self._ended.set_exception(exc)
            return
        if not self._ended.done():
            self._ended.set_result(None)

    async def _run_here(self, call: CallFields) -> bool:
        """Run a call frame's batch in the reading task; whether this task reads on.

        Before the batch runs, a callback is scheduled that starts a new reading task. It
        can only run once the batch waits (for the actor's turn, say): the batch then goes
        on here, the new task reads the next frames meanwhile, and this one ends with the
        batch (false). A batch that never waits (a quick call, the usual case) leaves the
        callback unrun; it is cancelled and this task reads on (true), which spares a task
        and two turns of the event loop per call. Either way one task reads, in order.
        """
        if self._batches >= MAX_CONCURRENT_BATCHES:
            await self._slot_freed_up()
        self._batches += 1
        successor = self._successor = asyncio.get_running_loop().call_soon(self._read_on)
        await self._run(*call)
        if self._successor is not successor:
            return False  # the batch waited, and a new reader took over meanwhile
        successor.cancel()
        self._successor = None
        return True

    def _read_frame(self, data: str | bytes) -> CallFields | None:
        """Answer a frame that is not a call (a subscription, or one that cannot be read);
        return the fields of a call frame."""
        try:
            self._server.check_size(len(data))
        except Refused as refusal:
            self._reply(None, refusal.status, refusal.body())
            return None
        call = _read_call_frame(data)
        if call is not None:
            return call
        try:
            frame = CLIENT_FRAME.validate_json(data)
        except ValidationError as exc:
            self._refuse_frame(data, exc)
            return None
        if isinstance(frame, CallFrame):
            return frame.id, frame.binding, frame.instance, calls_of(frame.batch)
        self._subscription(frame)
        return None

    def _read_on(self) -> None:
        """Start a new reader: the one before is running a batch that waits."""
        self._successor = None
        if not self._closing:
            self._spawn(self._reader())

    async def _slot_freed_up(self) -> None:
        """Wait until fewer than ``MAX_CONCURRENT_BATCHES`` batches run."""
        while self._batches >= MAX_CONCURRENT_BATCHES:
            self._slot_freed = asyncio.get_running_loop().create_future()
            await self._slot_freed

    async def _run(
        self, request_id: int, binding: str, instance: str, calls: list[WireCallFields]
    ) -> None:
        """Run a batch (its slot taken) and send the reply."""
        try:
            try:
                status, body = await self._server.run_batch(
                    binding, instance, calls, self._principal
                )
            except Exception:
                logger.exception("a batch failed inside the RPC server")
                status, body = 500, refusal_body(INTERNAL_ERROR, "the server failed; see its log")
            await self._send_reply(request_id, status, body)
        finally:
            self._batches -= 1
            if self._slot_freed is not None and not self._slot_freed.done():
                self._slot_freed.set_result(None)

    def _subscription(self, frame: SubscribeFrame) -> None:
        if frame.type == "subscribe":
            self._client_ids.add(frame.client_id)
            self._server.subscribe(frame.client_id, self)
            self._reply(frame.id, 200, {"subscribed": frame.client_id})
        else:
            self._client_ids.discard(frame.client_id)
            self._server.unsubscribe(frame.client_id, self)
            self._reply(frame.id, 200, {"unsubscribed": frame.client_id})

    def _refuse_frame(self, data: str | bytes, exc: ValidationError) -> None:
        """Answer an unreadable frame, under its id if one can be read."""
        try:
            tree = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            message = f"the frame is not valid JSON: {error}"
            tree = None
        else:
            message = describe_validation_error(exc, "not a valid frame")
        request_id = tree.get("id") if type(tree) is dict else None
        self._reply(
            request_id if type(request_id) is int else None,
            400,
            refusal_body(MALFORMED_REQUEST, message),
        )

    def deliver(self, frame: bytes) -> None:
        """Queue a downstream frame for this connection; a task sends it."""
        if self._enqueue(frame) and not self._writing:
            self._writing = True  # now, so that a second frame does not start a second drainer
            self._spawn(self._drain())

    async def aclose(self) -> None:
        """The connection ended: unsubscribe, cancel running batches, stop writing."""
        self._closing = True
        for client_id in self._client_ids:
            self._server.unsubscribe(client_id, self)
        self._client_ids.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _reply(self, request_id: int | None, status: int, body: dict[str, Any]) -> None:
        """Queue a reply from synchronous code; a task sends it."""
        self.deliver(_reply_frame(request_id, status, body))

    async def _send_reply(self, request_id: int | None, status: int, body: dict[str, Any]) -> None:
        """Send a reply from this task, or queue it if another task is sending: a reply is
        the common case, and a task switch per reply costs as much as the rest of a small
        call."""
        frame = _reply_frame(request_id, status, body)
        if self._writing or self._stopped:
            self._enqueue(frame)
            return
        self._writing = True
        try:
            await self._send(frame.decode())
        except Exception:
            self._lost_connection()
            return
        if self._outbox:  # queued while this reply was being sent
            await self._drain()
        else:
            self._writing = False

    def _enqueue(self, frame: bytes) -> bool:
        """Add a frame to the outbox; false when it is dropped (see ``MAX_QUEUED_FRAMES``)."""
        if self._stopped:
            return False
        if len(self._outbox) >= MAX_QUEUED_FRAMES:
            self._stopped = True
            self._outbox.clear()
            logger.warning("closing a WebSocket whose client reads too slowly")
            self._spawn(self._close(SLOW_CONSUMER_CLOSE_CODE, "too many unread messages"))
            return False
        self._outbox.append(frame)
        return True

    async def _drain(self) -> None:
        """Send the outbox in order. Only one drainer runs at a time (its starter sets
        ``_writing``), which keeps the order."""
        try:
            while self._outbox:
                await self._send(self._outbox.popleft().decode())
        except Exception:
            self._lost_connection()
        finally:
            self._writing = False

    def _lost_connection(self) -> None:
        """Sending failed: the connection is gone. The reader sees it too, and the session
        closes."""
        self._stopped = True
        self._outbox.clear()
        self._writing = False

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _read_call_frame(data: str | bytes) -> CallFields | None:
    """The fields of a call frame in the common, valid shape, read without building pydantic
    models; ``None`` for any other frame, which ``CLIENT_FRAME`` then validates."""
    try:
        tree = parse_json(data)
    except ValueError:
        return None
    return read_call_frame(tree)


def _reply_frame(request_id: int | None, status: int, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": "reply", "id": request_id, "status": status, "body": body})
