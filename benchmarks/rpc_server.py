"""The server process of ``benchmarks/rpc.py``: the RPC app and its raw peers, side by side.

    uvicorn benchmarks.rpc_server:app --ws websockets-sansio

Routes, all in one process:

- ``/rpc``: ``create_rpc_app`` serving a ``counter`` binding;
- ``/raw/ws``: a WebSocket that echoes each text frame (the floor for a WebSocket call);
- ``/raw/http``: a POST that answers with its own body (the floor for an HTTP call);
- ``/raw/stats``: how many HTTP requests and WebSocket frames reached the app, so the client
  can count round trips on the server side.

The actors live in ``BenchHost``, a minimal in-memory ``ActorHost``; swap it for an
``ActorSystem`` to measure the real runtime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from operation_chain import ExecutionPolicy, OperationChain, execute_operation_chain_async
from rpc import DownstreamMessage
from rpc.server import create_rpc_app


class Counter:
    def __init__(self) -> None:
        self.value = 0

    def increment(self) -> int:
        self.value += 1
        return self.value

    def add(self, a: int, b: int) -> int:
        return a + b


class BenchHost:
    """One plain object per instance, one call at a time per instance (an asyncio lock)."""

    def __init__(self) -> None:
        self._actors: dict[str, Counter] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def has_binding(self, binding: str) -> bool:
        return binding == "counter"

    async def call(
        self,
        binding: str,
        instance: str,
        chain: OperationChain,
        *,
        principal: Any = None,
        policy: ExecutionPolicy | None = None,
    ) -> Any:
        actor = self._actors.get(instance) or self._actors.setdefault(instance, Counter())
        async with self._locks.setdefault(instance, asyncio.Lock()):
            return await execute_operation_chain_async(actor, chain, policy=policy)

    def add_downstream_listener(
        self, listener: Callable[[DownstreamMessage], None]
    ) -> Callable[[], None]:
        return lambda: None


class Counting:
    """ASGI middleware counting HTTP requests and received WebSocket frames."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.http = 0
        self.frames = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.http += 1
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return

        async def counting_receive() -> Any:
            message = await receive()
            if message["type"] == "websocket.receive":
                self.frames += 1
            return message

        await self.app(scope, counting_receive, send)


async def raw_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


async def raw_post(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json")


async def stats(request: Request) -> Response:
    return JSONResponse({"http": app.http, "frames": app.frames})


def build_app() -> Counting:
    """The RPC app as uvicorn would serve it, with the raw peers added to the same router.

    The peers live in the RPC app's own route table rather than in an outer app that mounts
    it, so a raw frame and an RPC frame pass through the same layers of ASGI code.
    """
    rpc_app = create_rpc_app(BenchHost())
    rpc_app.router.routes += [
        WebSocketRoute("/raw/ws", raw_echo),
        Route("/raw/http", raw_post, methods=["POST"]),
        Route("/raw/stats", stats),
    ]
    return Counting(rpc_app)


app = build_app()
