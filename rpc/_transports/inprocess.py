"""``InProcessTransport``: the server's own dispatch, called directly, with no sockets.

Requests and answers are still encoded to JSON bytes and parsed back, and downstream frames
too, so a test over this transport catches every value the wire could not carry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette

from operation_chain import OperationChainError

from .._host import ActorHost, DownstreamListener
from .._messages import DownstreamFrame, downstream_message
from .._server import RpcServer
from .base import RpcRequest, RpcResponse, Transport

logger = logging.getLogger("rpc.client")


class InProcessTransport(Transport):
    """Calls an RPC server in the same process, through its full encode/decode path.

    Args:
        app_or_host: an app made by ``rpc.server.create_rpc_app`` (its policy and settings
            apply) or an ``ActorHost`` (served with the defaults).
        principal: the principal every call runs with; ``authenticate`` is not called, since
            there is no HTTP request to give it.

    Like a real server, a call keeps running when its caller stops waiting (a timeout);
    ``aclose()`` cancels whatever is still running.
    """

    def __init__(self, app_or_host: Starlette | ActorHost, *, principal: Any = None) -> None:
        if isinstance(app_or_host, Starlette):
            server = getattr(app_or_host.state, "rpc_server", None)
            if not isinstance(server, RpcServer):
                raise TypeError(
                    "InProcessTransport takes the app that create_rpc_app returned (not an app"
                    " it is mounted in), or an ActorHost"
                )
            self._server = server
        else:
            self._server = RpcServer(app_or_host)
        self._principal = principal
        self._running: set[asyncio.Task[tuple[int, bytes]]] = set()
        self._subscriptions: list[Callable[[], None]] = []

    async def handle_async_request(self, request: RpcRequest) -> RpcResponse:
        body = orjson.dumps(request.payload)
        task = asyncio.get_running_loop().create_task(
            self._server.handle_body(request.binding, request.instance, body, self._principal)
        )
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        status, content = await asyncio.shield(task)
        return RpcResponse(status, orjson.loads(content))

    async def subscribe(self, client_id: str, listener: DownstreamListener) -> Callable[[], None]:
        subscriber = _Subscriber(listener)
        self._server.subscribe(client_id, subscriber)

        def unsubscribe() -> None:
            self._server.unsubscribe(client_id, subscriber)

        self._subscriptions.append(unsubscribe)
        return unsubscribe

    async def aclose(self) -> None:
        for unsubscribe in self._subscriptions:
            unsubscribe()
        self._subscriptions.clear()
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


class _Subscriber:
    """Receives encoded downstream frames and hands them, decoded, to a listener on the next
    tick, as a socket would: never inside the sending actor's turn."""

    __slots__ = ("_listener",)

    def __init__(self, listener: DownstreamListener) -> None:
        self._listener = listener

    def deliver(self, frame: bytes) -> None:
        asyncio.get_running_loop().call_soon(self._receive, frame)

    def _receive(self, frame: bytes) -> None:
        try:
            message = downstream_message(DownstreamFrame.model_validate_json(frame))
        except (ValidationError, OperationChainError) as exc:
            logger.warning("dropped a downstream message that could not be decoded: %s", exc)
            return
        self._listener(message)
