"""``WebSocketTransport``: one shared connection, request ids, reconnection, downstream.

Every request is a frame with an id the server echoes in its reply, so concurrent callers
share one connection. When the connection drops, the requests in flight are rejected (they
may or may not have run: nothing is sent twice) and the next request reconnects. While
downstream subscriptions exist the transport reconnects on its own, with capped exponential
backoff and jitter, and subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from operation_chain import OperationChainError

from .._errors import AuthenticationError, ConnectionLostError, RpcError, TransportError
from .._host import DownstreamListener
from .._messages import AUTH_CLOSE_CODE, UNAUTHENTICATED, DownstreamFrame, downstream_message
from .base import RpcRequest, RpcResponse, Transport

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


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what checks it
    except ValueError as exc:
        raise ValueError(f"not a valid WebSocket URL: {url!r} ({exc})") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"WebSocketTransport needs a ws:// or wss:// URL, not {url!r}")


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
        self._pending: dict[int, tuple[ClientConnection, asyncio.Future[RpcResponse]]] = {}
        self._listeners: dict[str, list[DownstreamListener]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- requests ----------------------------------------------------------------------------

    async def handle_async_request(self, request: RpcRequest) -> RpcResponse:
        return await self._request(
            {
                "type": "call",
                "binding": request.binding,
                "instance": request.instance,
                "batch": request.payload,
            }
        )

    async def _request(self, frame: dict[str, Any]) -> RpcResponse:
        """Send a frame with a fresh id and wait for the reply with that id."""
        for attempt in (1, 2):
            conn = await self._connection()
            request_id = next(self._ids)
            future: asyncio.Future[RpcResponse] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = (conn, future)
            try:
                try:
                    frame["id"] = request_id
                    await conn.send(orjson.dumps(frame))  # binary: no decoding to str and back
                except ConnectionClosed as exc:
                    # Not sent, so it is safe to send again on a new connection, once.
                    self._lost(conn)
                    if attempt == 1 and conn.close_code != AUTH_CLOSE_CODE:
                        continue
                    raise self._loss_error(conn) from exc
                return await future
            finally:
                del self._pending[request_id]
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved here, so asyncio does not log it
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
        """Adopt a new connection: start reading, subscribe again, then let requests in."""
        self._conn = conn
        self._start(self._read(conn))
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

    async def _read(self, conn: ClientConnection) -> None:
        try:
            async for message in conn:
                self._dispatch(message)
        except ConnectionClosed:
            pass
        finally:
            self._lost(conn)

    def _dispatch(self, message: str | bytes) -> None:
        reply = _read_reply(message)
        if reply is not None:
            request_id, status, body = reply
            entry = self._pending.get(request_id) if request_id is not None else None
            if entry is None:
                if status != 200:
                    logger.warning("the server at %s refused a frame: %s", self.url, body)
                return
            if not entry[1].done():
                entry[1].set_result(RpcResponse(status, body))
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
        for owner, future in list(self._pending.values()):
            if owner is conn and not future.done():
                future.set_exception(self._loss_error(conn))
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
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(TransportError("the WebSocketTransport was closed"))
        if conn is not None:
            await conn.close()
        await asyncio.gather(*tasks, return_exceptions=True)
