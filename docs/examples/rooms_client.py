"""A client of the rooms application (``docs/examples/rooms.py``), over real sockets.

Against a running server::

    python -m continuation serve docs/examples/rooms.py:create_system --db rooms.db
    python docs/examples/rooms_client.py http://127.0.0.1:8000/rpc

Without a URL it starts that server itself, on a free port and a temporary database, and
stops it at the end.

Alice joins the lobby over WebSocket and receives new messages downstream; Bob posts over
HTTP and asks the room for a reminder, which a continuation delivers a moment later.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from rpc import DownstreamMessage, HttpTransport, WebSocketTransport, create_rpc_client

APP = Path(__file__).with_name("rooms.py")


async def chat(http_url: str) -> None:
    ws_url = "ws" + http_url.removeprefix("http")
    inbox: asyncio.Queue[DownstreamMessage] = asyncio.Queue()
    async with (
        create_rpc_client(
            "Room",
            "lobby",
            transport=WebSocketTransport(ws_url),
            client_id="alice",
            on_downstream=inbox.put_nowait,
        ) as alice,
        create_rpc_client("Room", "lobby", transport=HttpTransport(http_url)) as bob,
    ):
        history = await alice.join("alice")
        print(f"alice joined the lobby ({len(history)} earlier messages)")

        number = await bob.post("bob", "hi alice")
        print(f"bob posted message #{number}")
        await bob.remind("time for tea", minutes=0)
        print("bob asked for a reminder")

        for _ in range(2):
            message = (await asyncio.wait_for(inbox.get(), timeout=10)).payload
            print(f"alice received  {message['author']}: {message['text']}")
        await alice.leave("alice")


@contextlib.asynccontextmanager
async def local_server() -> AsyncIterator[str]:
    """Serve the rooms application in a child process; yield its RPC URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, "-m", "continuation", "serve", f"{APP}:create_system",
            "--port", str(port), "--db", str(Path(tmp) / "rooms.db"), "--log-level", "warning",
        ]  # fmt: skip
        server = subprocess.Popen(command)
        try:
            await _wait_for_port(port, server)
            yield f"http://127.0.0.1:{port}/rpc"
        finally:
            server.terminate()
            server.wait(timeout=10)


async def _wait_for_port(port: int, server: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)  # polling for the socket, not waiting on a timer
        else:
            writer.close()
            await writer.wait_closed()
            return
    raise RuntimeError("the server did not start listening")


async def main() -> None:
    if len(sys.argv) > 1:
        await chat(sys.argv[1])
        return
    async with local_server() as url:
        await chat(url)


if __name__ == "__main__":
    asyncio.run(main())
