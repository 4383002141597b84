"""``WebSocketTransport``: one shared connection, request ids, reconnection, downstream.

Every request is a frame with an id the server echoes in its reply, so concurrent callers
share one connection. When the connection drops, the requests in flight are rejected (they
may or may not have run: nothing is sent twice) and the next request reconnects. While
downstream subscriptions exist the transport reconnects on its own, with capped exponential
backoff and jitter, and subscribes again.

Frames from the server are read as they arrive, in the connection's own callback, rather
than by a task looping over ``recv()``: an answer then reaches the client without waking
that task first, which on a small call is a noticeable share of the round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.frames import DATA_OPCODES, Frame
from websockets.protocol import Event, State

from operation_chain import OperationChainError

from .._errors import AuthenticationError, ConnectionLostError, RpcError, TransportError
from .._host import DownstreamListener
from .._messages import AUTH_CLOSE_CODE, UNAUTHENTICATED, DownstreamFrame, downstream_message
from .base import AnswerCallback, RpcRequest, RpcResponse, Transport

logger = logging.getLogger("rpc.client")

MAX_FRAME_SIZE: Final = 64 * 1024 * 1024
"""The largest frame accepted from the server (websockets' default, 1 MiB, is too small for
some results)."""


def _read_reply(message: str | bytes) -> tuple[int | None, int, dict[str, Any]] | None:
    """``(id, status, body)`` when ``message`` is a reply frame, else ``None``.

    Checked by hand rather than by a pydantic model: this runs for every answer.
    """
    try:
        frame = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    if type(frame) is not dict or frame.get("type") != "reply" or len(frame) != 4:
        return None
    request_id, status, body = frame.get("id"), frame.get("status"), frame.get("body")
    if (request_id is not None and type(request_id) is not int) or type(status) is not int:
        return None
    if type(body) is not dict:
        return None
    return request_id, status, body


Waiter = asyncio.Future[RpcResponse] | AnswerCallback
"""Where a request's answer goes: the future ``handle_async_request`` awaits, or the
callback of ``_start_request``."""


class _Connection(ClientConnection):
    """A websockets connection that hands each message from the server to ``on_message`` as
    soon as it is parsed, and reports its end to ``on_lost``.

    It overrides two hooks: ``process_event``, which websockets calls for every frame
    received, and asyncio's ``connection_lost``. Control frames, and anything before the
    callbacks are set, take websockets' own path.
    """

    on_message: Callable[[bytes], None] | None = None
    on_lost: Callable[[ClientConnection], None] | None = None
    _fragments: list[bytes] | None = None  # of a message sent in several frames

    def process_event(self, event: Event) -> None:
        on_message = self.on_message
        if (
            on_message is None
            or self.response is None  # the handshake's response is the first event
            or type(event) is not Frame
            or event.opcode not in DATA_OPCODES
        ):
            super().process_event(event)
            return
        data = bytes(event.data)
        if not event.fin:
            self._fragments = [*(self._fragments or ()), data]
            return
        if self._fragments is not None:
            data, self._fragments = b"".join([*self._fragments, data]), None
        try:
            on_message(data)
        except Exception:  # raised into websockets, it would fail the connection
            logger.exception("handling a message from the server failed")

    def send_now(self, message: bytes) -> bool:
        """Write ``message`` as one binary frame at once, if the connection is open and
        nothing waits to be written; else write nothing and return false.

        What ``send`` does on that path, without its ``async with`` and its ``await``: the
        frame goes straight to the socket, and ``send`` itself is left for when writing has
        to wait (an open connection whose buffer holds data, one closing or closed). The
        transport never sends a message in fragments, so none can be half sent here.
        """
        if (
            self.protocol.state is not State.OPEN
            or self.transport.is_closing()
            or self.transport.get_write_buffer_size()
        ):
            return False
        self.protocol.send_binary(message)
        self.send_data()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.on_lost is not None:
            try:
                self.on_lost(self)
            except Exception:  # pragma: no cover - _lost does not raise; asyncio would log it
                logger.exception("handling the end of a connection failed")


def _deliver(waiter: Waiter, answer: RpcResponse | Exception) -> None:
    """Give a request's answer (or the error that replaced it) to whoever waits for it."""
    if isinstance(waiter, asyncio.Future):
        if not waiter.done():  # done: its caller stopped waiting
            if isinstance(answer, Exception):
                waiter.set_exception(answer)
            else:
                waiter.set_result(answer)
        return
    try:
        waiter(answer)
    except Exception:
        logger.exception("handling the answer to a request failed")


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what checks it
    except ValueError as exc:
        raise ValueError(f"not a valid WebSocket URL: {url!r} ({exc})") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"WebSocketTransport needs a ws:// or wss:// URL, not {url!r}")


def _call_frame(request: RpcRequest) -> dict[str, Any]:
    return {
        "type": "call",
        "binding": request.binding,
        "instance": request.instance,
        "batch": request.payload,
    }


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before reconnection attempt ``attempt + 1`` (``attempt`` from 0).

    Exponential (``base * 2**attempt``), capped at ``cap``, with "equal jitter": half the
    delay is fixed and half random, so clients that lost the same server spread out without
    any of them retrying at once.
    """
    ceiling = min(cap, base * 2.0 ** min(attempt, 62))
    return ceiling / 2 + rand() * ceiling / 2


class WebSocketTransport(Transport):
    """Sends batches over one WebSocket connection to ``url`` and receives downstream messages.

    Args:
        url: the server's RPC prefix, e.g. ``"ws://127.0.0.1:8000/rpc"``.
        headers: sent with the opening handshake (an ``Authorization`` header, say).
        backoff_base: seconds before the first reconnection attempt (about; see
            ``backoff_delay``).
        backoff_max: the cap on the delay between attempts.
        open_timeout: seconds one connection attempt may take.

    The connection opens on the first request (or subscription). A request waits while the
    transport connects, retrying with backoff; the client's per-call ``timeout`` bounds the
    wait. A handshake the server refuses (HTTP 4xx, or close code 4401 for authentication)
    is not retried.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        backoff_base: float = 0.1,
        backoff_max: float = 10.0,
        open_timeout: float = 10.0,
    ) -> None:
        _check_url(url)
        if not 0 < backoff_base <= backoff_max:
            raise ValueError("backoff_base and backoff_max must satisfy 0 < base <= max")
        self.url = url.rstrip("/")
        self._headers = dict(headers or {})
        self._backoff = (backoff_base, backoff_max)
        self._open_timeout = open_timeout
        self._conn: ClientConnection | None = None
        self._connecting: asyncio.Task[ClientConnection] | None = None
        self._waiting = 0  # requests waiting for a connection
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[ClientConnection, Waiter]] = {}
        self._sending: set[int] = set()  # ids of the requests being sent
        self._listeners: dict[str, list[DownstreamListener]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- requests ----------------------------------------------------------------------------

    async def handle_async_request(self, request: RpcRequest) -> RpcResponse:
        return await self._request(_call_frame(request))

    async def _start_request(
        self, request: RpcRequest, on_answer: AnswerCallback
    ) -> Callable[[], None]:
        request_id = await self._send(_call_frame(request), on_answer)
        return functools.partial(self._forget, request_id)

    def _start_request_now(
        self, request: RpcRequest, on_answer: AnswerCallback
    ) -> Callable[[], None] | None:
        """Write the request on the open connection at once, if it can take it (see
        ``_Connection.send_now``); else ``None``, and ``_start_request`` connects or waits.

        Written in one go, it cannot be half sent when the connection drops: from then on
        ``_lost`` rejects it like any request in flight.
        """
        conn = self._conn
        if not isinstance(conn, _Connection) or self._closed:  # not connected
            return None
        frame = _call_frame(request)
        request_id = frame["id"] = next(self._ids)
        if not conn.send_now(orjson.dumps(frame)):
            return None
        self._pending[request_id] = (conn, on_answer)  # nothing can answer it before this
        return functools.partial(self._forget, request_id)

    def _forget(self, request_id: int) -> None:
        """Stop waiting for the reply to a request: it will be dropped if it comes."""
        self._pending.pop(request_id, None)

    async def _request(self, frame: dict[str, Any]) -> RpcResponse:
        """Send a frame with a fresh id and wait for the reply with that id."""
        future: asyncio.Future[RpcResponse] = asyncio.get_running_loop().create_future()
        request_id = await self._send(frame, future)
        try:
            return await future
        finally:
            self._forget(request_id)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved here, so asyncio does not log it

    async def _send(self, frame: dict[str, Any], waiter: Waiter) -> int:
        """Send a frame with a fresh id, its reply to go to ``waiter``; return the id."""
        for attempt in (1, 2):
            conn = self._conn
            if conn is None or self._closed:
                conn = await self._connection()
            request_id = frame["id"] = next(self._ids)
            # Registered before sending, since the reply may come while send() drains; but
            # while it sends, a lost connection is this method's to handle, not _lost's.
            self._pending[request_id] = (conn, waiter)
            self._sending.add(request_id)
            try:
                await conn.send(orjson.dumps(frame))  # binary: no decoding to str and back
            except ConnectionClosed as exc:
                # Not sent, so it is safe to send again on a new connection, once.
                self._pending.pop(request_id, None)
                self._lost(conn)
                if attempt == 1 and conn.close_code != AUTH_CLOSE_CODE:
                    continue
                raise self._loss_error(conn) from exc
            except BaseException:
                self._pending.pop(request_id, None)
                raise
            finally:
                self._sending.discard(request_id)
            if conn is not self._conn and self._pending.pop(request_id, None) is not None:
                _deliver(waiter, self._loss_error(conn))  # sent, then the connection dropped
            return request_id
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _connection(self) -> ClientConnection:
        if self._closed:
            raise TransportError("the WebSocketTransport is closed")
        if self._conn is not None:
            return self._conn
        connecting = self._ensure_connecting()
        self._waiting += 1
        try:
            return await asyncio.shield(connecting)
        finally:
            self._waiting -= 1

    def _ensure_connecting(self) -> asyncio.Task[ClientConnection]:
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.get_running_loop().create_task(self._connect())
            connecting.add_done_callback(self._connect_done)
        return connecting

    async def _connect(self) -> ClientConnection:
        """Connect, retrying with backoff while someone needs the connection."""
        for attempt in itertools.count():
            try:
                conn = await connect(
                    self.url,
                    additional_headers=self._headers or None,
                    open_timeout=self._open_timeout,
                    max_size=MAX_FRAME_SIZE,
                    compression=None,  # frames are small JSON: deflate costs more than it saves
                    create_connection=_Connection,
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status < 500:
                    raise TransportError(
                        f"the server refused the WebSocket handshake at {self.url}: HTTP {status}"
                    ) from exc
                failure: Exception = exc
            except (OSError, TimeoutError, WebSocketException) as exc:
                failure = exc
            else:
                await self._opened(conn)
                return conn
            if not (self._waiting or self._listeners):
                raise TransportError(f"could not connect to {self.url}: {failure!r}") from failure
            delay = backoff_delay(attempt, *self._backoff)
            logger.info("connecting to %s failed (%r); retry in %.2f s", self.url, failure, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the loop above is endless")

    async def _opened(self, conn: ClientConnection) -> None:
        """Adopt a new connection: read it, subscribe again, then let requests in."""
        assert isinstance(conn, _Connection)
        conn.on_message = self._dispatch
        conn.on_lost = self._lost
        self._conn = conn
        for client_id in list(self._listeners):
            await self._send_quietly(conn, "subscribe", client_id)

    def _connect_done(self, task: asyncio.Task[ClientConnection]) -> None:
        self._connecting = None
        if task.cancelled():
            return
        error = task.exception()  # retrieved here too, for reconnections nobody awaits
        if error is not None and self._listeners:
            logger.warning("gave up connecting to %s: %s", self.url, error)

    # -- reading -----------------------------------------------------------------------------

    def _dispatch(self, message: str | bytes) -> None:
        """Handle a frame from the server, in the connection's callback: it must not raise."""
        reply = _read_reply(message)
        if reply is not None:
            request_id, status, body = reply
            entry = self._pending.pop(request_id, None) if request_id is not None else None
            if entry is None:
                if status != 200:
                    logger.warning("the server at %s refused a frame: %s", self.url, body)
                return
            _deliver(entry[1], RpcResponse(status, body))
            return
        try:
            frame = DownstreamFrame.model_validate_json(message)
        except ValidationError as exc:
            logger.warning("ignored a frame from %s that is not valid: %s", self.url, exc)
            return
        try:
            downstream = downstream_message(frame)
        except OperationChainError as exc:
            logger.warning("dropped a downstream message that could not be decoded: %s", exc)
            return
        for client_id in frame.client_ids:
            for listener in list(self._listeners.get(client_id, ())):
                try:
                    listener(downstream)
                except Exception:
                    logger.exception("a downstream listener raised")

    def _lost(self, conn: ClientConnection) -> None:
        """The connection ended: reject its requests and, for subscribers, reconnect."""
        if self._conn is conn:
            self._conn = None
        for request_id, (owner, waiter) in list(self._pending.items()):
            if owner is conn and request_id not in self._sending:
                del self._pending[request_id]
                _deliver(waiter, self._loss_error(conn))
        refused = conn.close_code == AUTH_CLOSE_CODE
        if self._listeners and not refused and not self._closed:
            self._ensure_connecting()

    def _loss_error(self, conn: ClientConnection) -> RpcError:
        code, reason = conn.close_code, conn.close_reason
        if code == AUTH_CLOSE_CODE:
            return AuthenticationError(UNAUTHENTICATED, reason or "refused", status=401)
        return ConnectionLostError(
            f"the WebSocket connection to {self.url} closed (code {code}"
            f"{': ' + reason if reason else ''}) before the call was answered; it may or may"
            " not have run"
        )

    # -- downstream --------------------------------------------------------------------------

    async def subscribe(self, client_id: str, listener: DownstreamListener) -> Callable[[], None]:
        await self._connection()  # first, so that connecting does not subscribe it twice
        self._listeners.setdefault(client_id, []).append(listener)
        subscribed = False
        try:
            await self._request({"type": "subscribe", "client_id": client_id})
            subscribed = True
        finally:
            if not subscribed:
                self._remove(client_id, listener)

        def unsubscribe() -> None:
            self._remove(client_id, listener)

        return unsubscribe

    def _remove(self, client_id: str, listener: DownstreamListener) -> None:
        listeners = self._listeners.get(client_id, [])
        if listener in listeners:
            listeners.remove(listener)
        if not listeners and client_id in self._listeners:
            del self._listeners[client_id]
            conn = self._conn
            if conn is not None:
                self._start(self._send_quietly(conn, "unsubscribe", client_id))

    async def _send_quietly(self, conn: ClientConnection, kind: str, client_id: str) -> None:
        """Send a (un)subscribe frame whose reply nobody waits for."""
        frame = {"type": kind, "id": next(self._ids), "client_id": client_id}
        # On failure the reader sees the loss; subscriptions are sent again on reconnection.
        with contextlib.suppress(ConnectionClosed):
            await conn.send(orjson.dumps(frame).decode())

    # -- lifecycle ---------------------------------------------------------------------------

    def _start(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Close the connection and stop reconnecting; requests in flight are rejected."""
        if self._closed:
            return
        self._closed = True
        self._listeners.clear()
        tasks = [*self._tasks, *([self._connecting] if self._connecting else [])]
        for task in tasks:
            task.cancel()
        conn, self._conn = self._conn, None
        pending, self._pending = self._pending, {}
        for _, waiter in pending.values():
            _deliver(waiter, TransportError("the WebSocketTransport was closed"))
        if conn is not None:
            await conn.close()
        await asyncio.gather(*tasks, return_exceptions=True)
