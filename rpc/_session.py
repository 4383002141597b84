"""One server-side WebSocket connection, independent of the web framework that carries it.

The session reads client frames (see ``_messages``), handles subscriptions in arrival order,
runs each batch in its own task so a slow actor does not hold up the others, and writes every
outgoing frame (replies and downstream messages) through one queue, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import orjson
from pydantic import ValidationError

from ._messages import (
    CLIENT_FRAME,
    INTERNAL_ERROR,
    MALFORMED_REQUEST,
    CallFrame,
    describe_validation_error,
    refusal_body,
)
from ._server import Refused, RpcServer

logger = logging.getLogger("rpc.server")

MAX_CONCURRENT_BATCHES: Final = 256
"""Batches one connection may have running at once; past this, its frames wait unread."""

MAX_QUEUED_FRAMES: Final = 4096
"""Outgoing frames a connection may have waiting; past this the client is too slow to keep."""

SLOW_CONSUMER_CLOSE_CODE: Final = 1008


class Session:
    """A WebSocket connection's state on the server.

    Args:
        server: the dispatcher.
        principal: what ``authenticate`` returned for the connection.
        send: sends one text frame.
        close: closes the connection with a code and a reason.
    """

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
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_BATCHES)
        self._outbox: deque[bytes] = deque()
        self._writing = False  # a task is sending the outbox
        self._stopped = False  # the connection failed, or the client read too slowly

    async def receive(self, data: str | bytes) -> None:
        """Handle one frame from the client."""
        try:
            self._server.check_size(len(data))
            frame = CLIENT_FRAME.validate_json(data)
        except Refused as refusal:
            self._reply(None, refusal.status, refusal.body())
            return
        except ValidationError as exc:
            self._refuse_frame(data, exc)
            return
        if isinstance(frame, CallFrame):
            await self._slots.acquire()
            task = asyncio.get_running_loop().create_task(self._call(frame))
            self._tasks.add(task)
            task.add_done_callback(self._call_done)
        elif frame.type == "subscribe":
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
            self._start(self._drain())

    async def aclose(self) -> None:
        """The connection ended: unsubscribe, cancel running batches, stop writing."""
        for client_id in self._client_ids:
            self._server.unsubscribe(client_id, self)
        self._client_ids.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _call(self, frame: CallFrame) -> None:
        try:
            status, body = await self._server.run_batch(
                frame.binding, frame.instance, frame.batch, self._principal
            )
        except Exception:
            logger.exception("a batch failed inside the RPC server")
            status, body = 500, refusal_body(INTERNAL_ERROR, "the server failed; see its log")
        await self._send_reply(frame.id, status, body)

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    def _reply(self, request_id: int | None, status: int, body: dict[str, Any]) -> None:
        """Queue a reply from synchronous code; a task sends it."""
        self.deliver(_reply_frame(request_id, status, body))

    async def _send_reply(self, request_id: int | None, status: int, body: dict[str, Any]) -> None:
        """Queue a reply and, if no task is sending, send it from this one: a reply is the
        common case, and a task switch per reply costs as much as the rest of a small call."""
        if self._enqueue(_reply_frame(request_id, status, body)) and not self._writing:
            self._writing = True
            await self._drain()

    def _enqueue(self, frame: bytes) -> bool:
        """Add a frame to the outbox; false when it is dropped (see ``MAX_QUEUED_FRAMES``)."""
        if self._stopped:
            return False
        if len(self._outbox) >= MAX_QUEUED_FRAMES:
            self._stopped = True
            self._outbox.clear()
            logger.warning("closing a WebSocket whose client reads too slowly")
            self._start(self._close(SLOW_CONSUMER_CLOSE_CODE, "too many unread messages"))
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
            # The connection is gone; the receive loop sees it too and closes the session.
            self._stopped = True
            self._outbox.clear()
        finally:
            self._writing = False

    def _start(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _reply_frame(request_id: int | None, status: int, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": "reply", "id": request_id, "status": status, "body": body})
