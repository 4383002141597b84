"""The server process of ``benchmarks/rpc.py``: the RPC app and its raw peers, side by side.

    python benchmarks/rpc_server.py --port 8000 [--db FILE]

It runs a real ``continuation.ActorSystem`` (SQLite in a temporary directory unless ``--db``
is given) as an async context manager around uvicorn, with uvicorn's sans-I/O websockets
implementation. Routes, all in one process and one app:

- ``/rpc``: ``create_rpc_app`` serving the ``counter`` binding (the ``Counter`` actor);
- ``/raw/ws``: a WebSocket that echoes each text frame (the floor for a WebSocket call);
- ``/raw/http``: a POST that answers with its own body (the floor for an HTTP call);
- ``/raw/stats``: how many HTTP requests and WebSocket frames reached the app, so the client
  can count round trips on the server side.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from continuation import Actor, ActorSystem
from rpc.server import create_rpc_app


class Counter(Actor):
    """The benchmark's actor: ``ping`` and ``add`` touch no storage, ``increment`` does."""

    binding = "counter"

    def ping(self) -> int:
        return 1

    def add(self, a: int, b: int) -> int:
        return a + b

    def increment(self) -> int:
        count: int = self.storage.get("count", 0) + 1
        self.storage.put("count", count)
        return count


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


def build_app(system: ActorSystem) -> Counting:
    """The RPC app as uvicorn would serve it, with the raw peers added to the same router.

    The peers live in the RPC app's own route table rather than in an outer app that mounts
    it, so a raw frame and an RPC frame pass through the same layers of ASGI code.
    """
    rpc_app = create_rpc_app(system)

    async def stats(request: Request) -> Response:
        return JSONResponse({"http": counting.http, "frames": counting.frames})

    rpc_app.router.routes += [
        WebSocketRoute("/raw/ws", raw_echo),
        Route("/raw/http", raw_post, methods=["POST"]),
        Route("/raw/stats", stats),
    ]
    counting = Counting(rpc_app)
    return counting


async def serve(port: int, database: str) -> None:
    async with ActorSystem(database, actors=[Counter]) as system:
        config = uvicorn.Config(
            build_app(system),
            host="127.0.0.1",
            port=port,
            ws="websockets-sansio",
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
        await uvicorn.Server(config).serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", help="the SQLite file (default: one in a temporary directory)")
    args = parser.parse_args()
    if args.db is not None:
        asyncio.run(serve(args.port, args.db))
        return
    with tempfile.TemporaryDirectory(prefix="ocan-rpc-bench-") as directory:
        asyncio.run(serve(args.port, str(Path(directory) / "bench.db")))


if __name__ == "__main__":
    main()
