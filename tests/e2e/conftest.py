"""Real uvicorn servers on 127.0.0.1 for the end-to-end tests.

``start_server`` runs uvicorn inside the test's own event loop, on a free port (or a given
one, to restart a server where it was). The app is wrapped in ``Counting``, which counts
HTTP requests and WebSocket frames on the server side, so tests can assert round trips.

Uvicorn runs with its sans-I/O websockets implementation: its default one is built on the
``websockets.legacy`` API, which raises a DeprecationWarning (an error in this suite).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

from rpc.server import create_rpc_app

from ..rpc.host import Counter, FakeHost

Scope = dict[str, Any]


class Counting:
    """ASGI middleware counting what reaches the app: HTTP requests, WebSocket connections
    and the frames received on them."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.http_requests = 0
        self.connections = 0
        self.frames = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.http_requests += 1
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        self.connections += 1

        async def counting_receive() -> Any:
            message = await receive()
            if message["type"] == "websocket.receive":
                self.frames += 1
            return message

        await self.app(scope, counting_receive, send)


@dataclass
class Running:
    """A started server: where it listens, and how to stop it."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/rpc"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/rpc"

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def start_server(app: Any, port: int | None = None) -> Running:
    """Start uvicorn serving ``app`` on 127.0.0.1 and wait until it accepts connections."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port or free_port(),
        ws="websockets-sansio",
        lifespan="off",
        log_config=None,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:  # polling for the socket to be up
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.005)
    return Running(server, task, config.port)


@pytest.fixture
def host() -> FakeHost:
    return FakeHost(counter=Counter)


@pytest.fixture
def counting(host: FakeHost) -> Counting:
    return Counting(create_rpc_app(host))


@pytest.fixture
async def running(counting: Counting) -> AsyncIterator[Running]:
    running = await start_server(counting)
    yield running
    await running.stop()
