"""End to end with the real ActorSystem: the rooms example served by uvicorn and by
``python -m continuation serve``, talked to over real HTTP and WebSocket."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from continuation import ActorSystem, ManualClock
from continuation._cli import main
from rpc import DownstreamMessage, HttpTransport, WebSocketTransport, create_rpc_client
from rpc.server import create_rpc_app

from .conftest import Running, free_port, start_server

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_e2e_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rooms = _load("rooms")


async def _whoami(request: Any) -> str:
    user = request.headers.get("x-user")
    if not user:
        raise PermissionError("who are you?")
    return str(user)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[ActorSystem, Running]]:
    system = rooms.create_system(str(tmp_path / "rooms.db"), clock=ManualClock())
    async with system:
        running = await start_server(create_rpc_app(system))
        yield system, running
        await running.stop()


async def test_downstream_follows_the_commit_and_reaches_every_connection(
    served: tuple[ActorSystem, Running],
) -> None:
    system, running = served
    first: asyncio.Queue[DownstreamMessage] = asyncio.Queue()
    second: asyncio.Queue[DownstreamMessage] = asyncio.Queue()

    def client(inbox: asyncio.Queue[DownstreamMessage]) -> Any:
        return create_rpc_client(
            "Room",
            "lobby",
            transport=WebSocketTransport(running.ws_url),
            client_id="alice",
            on_downstream=inbox.put_nowait,
        )

    async with (
        client(first) as tab1,
        client(second) as tab2,
        create_rpc_client("Room", "lobby", transport=HttpTransport(running.http_url)) as bob,
    ):
        await tab1.join("alice")
        with pytest.raises(ValueError, match="needs some text"):
            await bob.post("bob", "   ")
        assert await bob.post("bob", "hi") == 1
        for inbox in (first, second):
            message = await asyncio.wait_for(inbox.get(), 10)
            assert message.payload == {"author": "bob", "text": "hi", "room": "lobby"}
        # The reminder is a continuation: nothing arrives until its turn commits.
        await tab2.remind("tea", minutes=5)
        await system.advance(299)
        assert first.empty()
        await system.advance(1)
        message = await asyncio.wait_for(first.get(), 10)
        assert message.payload["author"] == "reminder-bot"
        assert [m["text"] for m in await bob.history()] == ["hi", "tea"]


async def test_the_principal_reaches_the_actor(tmp_path: Path) -> None:
    from continuation import Actor

    class Whoami(Actor):
        def whoami(self) -> Any:
            return self.principal

    async with ActorSystem(str(tmp_path / "w.db"), actors=[Whoami]) as system:
        running = await start_server(create_rpc_app(system, authenticate=_whoami))
        try:
            transport = HttpTransport(running.http_url, headers={"x-user": "ada"})
            async with create_rpc_client("Whoami", "w", transport=transport) as client:
                assert await client.whoami() == "ada"
        finally:
            await running.stop()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "served.db"


def _serve(db: Path, port: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "continuation", "serve", f"{EXAMPLES / 'rooms.py'}:create_system",
        "--port", str(port), "--db", str(db), "--log-level", "warning",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE)


async def _until_listening(port: int, server: subprocess.Popen[bytes]) -> None:
    for _ in range(400):
        assert server.poll() is None, "the server exited"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.025)  # polling for the socket to be up
        else:
            writer.close()
            await writer.wait_closed()
            return
    raise AssertionError("the server never listened")


async def test_serve_runs_the_application_with_its_scheduler_and_keeps_its_data(db: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/rpc"
    for round_ in (1, 2):
        server = _serve(db, port)
        try:
            await _until_listening(port, server)
            inbox: asyncio.Queue[DownstreamMessage] = asyncio.Queue()
            async with create_rpc_client(
                "Room",
                "lobby",
                transport=WebSocketTransport(f"ws://127.0.0.1:{port}/rpc"),
                client_id="alice",
                on_downstream=inbox.put_nowait,
            ) as alice:
                history = await alice.join("alice")
                assert len(history) == 2 * (round_ - 1)
                async with create_rpc_client("Room", "lobby", transport=HttpTransport(url)) as bob:
                    await bob.post("bob", f"round {round_}")
                    await bob.remind("fired by the real scheduler", minutes=0)
                texts = [(await asyncio.wait_for(inbox.get(), 10)).payload["text"] for _ in "ab"]
                assert texts == [f"round {round_}", "fired by the real scheduler"]
        finally:
            server.send_signal(signal.SIGTERM)
            # uvicorn shuts down gracefully, then exits with the signal's own status.
            assert server.wait(timeout=10) == -signal.SIGTERM
            assert server.stdout is not None
            output = server.stdout.read()
            server.stdout.close()
            assert b"serving" in output
            assert output.endswith(b"closed the actor system\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "no-colon"], "is not MODULE:ATTR"),
        (["serve", "no_such_module_xyz:app"], "cannot import 'no_such_module_xyz'"),
        (["serve", "missing/file.py:app"], "no such file"),
        (["serve", f"{EXAMPLES / 'rooms.py'}:nothing"], "has no attribute 'nothing'"),
        (["serve", f"{EXAMPLES / 'rooms.py'}:MAX_HISTORY"], "not int"),
        (["serve", f"{EXAMPLES / 'rooms.py'}:tour", "--db", "x.db"], "cannot be called with"),
    ],
)
def test_serve_refuses_bad_targets(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_serve_takes_a_system_or_a_function_returning_one(tmp_path: Path) -> None:
    from continuation import InvalidArgumentError
    from continuation._serve import build_system

    system = ActorSystem(str(tmp_path / "s.db"))
    assert build_system(system, None) is system
    assert isinstance(build_system(rooms.create_system, str(tmp_path / "r.db")), ActorSystem)
    with pytest.raises(InvalidArgumentError, match="--db needs a function"):
        build_system(system, "other.db")
    with pytest.raises(InvalidArgumentError, match="returned dict"):
        build_system(dict, None)


async def test_the_lifespan_starts_and_closes_the_system(tmp_path: Path) -> None:
    from continuation._serve import _Lifespan

    system = rooms.create_system(str(tmp_path / "l.db"))
    sent: list[dict[str, Any]] = []
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await _Lifespan(create_rpc_app(system), system)({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    # Started and closed: a closed system cannot start again.
    sent.clear()
    incoming = iter([{"type": "lifespan.startup"}])
    await _Lifespan(create_rpc_app(system), system)({"type": "lifespan"}, receive, send)
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "closed" in sent[0]["message"]
