"""End to end with real processes on 127.0.0.1: ``python -m continuation bouncer`` and a host
served by ``python -m continuation serve`` whose only timer is the bouncer; and a bouncer
killed with SIGKILL while waits are pending.

These cross processes, so they wait on the real clock: each wait polls with a bounded
deadline, and the bouncer's minimum delay is lowered to one second.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from continuation.bouncer import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from rpc import HttpTransport, create_rpc_client

from ..e2e.conftest import free_port, start_server
from .conftest import AUTH, KEY, TOKEN

HOST_APP = Path(__file__).with_name("host_app.py")
DEADLINE = 20.0


@contextmanager
def process(command: list[str], **options: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, stopped (SIGKILL if need be) when the block ends."""
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, **options)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def bouncer_command(tmp_path: Path, port: int) -> list[str]:
    tokens, key = tmp_path / "tokens", tmp_path / "signing.key"
    tokens.write_text(f"# the host's token\n{TOKEN}\n")
    key.write_bytes(KEY + b"\n")
    return [
        sys.executable, "-m", "continuation", "bouncer", "--db", str(tmp_path / "waits.db"),
        "--port", str(port), "--min-delay", "1", "--token-file", str(tokens),
        "--signing-key-file", str(key), "--log-level", "warning",
    ]  # fmt: skip


async def until(check: Callable[[], Awaitable[bool]], what: str) -> float:
    """Poll ``check`` until it holds (bounded); return when it first held (monotonic)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if await check():
            return time.monotonic()
        await asyncio.sleep(0.05)  # polling another process
    raise AssertionError(f"timed out waiting for {what}")


async def answers(url: str, child: subprocess.Popen[bytes]) -> bool:
    assert child.poll() is None, f"{url} exited with {child.returncode}"
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            await client.get(url)
    except httpx.TransportError:
        return False
    return True


async def test_send_wait_delete_finishes_only_after_the_bouncers_callback(tmp_path: Path) -> None:
    bouncer_port, host_port = free_port(), free_port()
    env = {
        **os.environ,
        "BOUNCER_URL": f"http://127.0.0.1:{bouncer_port}",
        "BOUNCER_TOKEN": TOKEN,
        "BOUNCER_SIGNING_KEY": KEY.decode(),
        "BOUNCER_MIN_DELAY": "1",
        "HOST_CALLBACK_URL": f"http://127.0.0.1:{host_port}/bouncer/wake",
    }
    serve = [
        sys.executable, "-m", "continuation", "serve", f"{HOST_APP}:create_system",
        "--db", str(tmp_path / "host.db"), "--port", str(host_port), "--log-level", "warning",
    ]  # fmt: skip
    with process(serve, env=env) as host:
        host_url = f"http://127.0.0.1:{host_port}"
        await until(lambda: answers(host_url, host), "the host to listen")
        transport = HttpTransport(f"{host_url}/rpc")
        async with create_rpc_client("Note", "n1", transport=transport) as note:
            await note.send("hello", 0)
            # Due at once, but the host keeps no timer (test_timer pins that it starts no
            # scheduler loop) and the bouncer is not running yet.
            assert await note.text() == "hello"
            with process(bouncer_command(tmp_path, bouncer_port)) as bouncer:
                started = time.monotonic()

                async def deleted() -> bool:
                    assert bouncer.poll() is None, "the bouncer exited"
                    return await note.text() is None

                finished = await until(deleted, "the bouncer's callback to run the last step")
        # The host's reports were retried until the bouncer was up; the wait it registered
        # lasted the bouncer's minimum delay.
        assert finished - started >= 1.0
    with sqlite3.connect(tmp_path / "waits.db") as db:
        statuses = Counter(status for (status,) in db.execute("SELECT status FROM waits"))
    db.close()
    assert statuses["delivered"] >= 1


async def test_a_killed_bouncer_delivers_every_wait_after_restart_and_none_twice(
    tmp_path: Path,
) -> None:
    received: Counter[str] = Counter()
    arrived: dict[str, float] = {}

    async def callback(request: Request) -> Response:
        body = await request.body()
        verify_signature(
            KEY, request.headers[TIMESTAMP_HEADER], body, request.headers[SIGNATURE_HEADER]
        )
        wait_id = (await request.json())["id"]
        received[wait_id] += 1
        arrived.setdefault(wait_id, time.monotonic())
        return Response(status_code=204)

    receiver = await start_server(Starlette(routes=[Route("/cb", callback, methods=["POST"])]))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    callback_url = f"http://127.0.0.1:{receiver.port}/cb"
    try:
        with process(bouncer_command(tmp_path, port)) as bouncer:
            await until(lambda: answers(f"{url}/health", bouncer), "the bouncer to listen")
            async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:

                async def register(delay: float, n: int) -> str:
                    body = {"delay": delay, "callback": callback_url, "payload": n}
                    response = await client.post("/waits", json=body)
                    assert response.status_code == 201, response.text
                    return str(response.json()["id"])

                early = await asyncio.gather(*(register(1, n) for n in range(20)))
                late = await asyncio.gather(*(register(4, n) for n in range(20, 40)))

                async def early_arrived() -> bool:
                    return all(wait_id in received for wait_id in early)

                await until(early_arrived, "the early waits")
            bouncer.kill()
            bouncer.wait()
        with sqlite3.connect(tmp_path / "waits.db") as db:
            recorded = {i for (i,) in db.execute("SELECT id FROM waits WHERE status='delivered'")}
        db.close()
        assert not recorded & set(late), "a late wait was delivered before it was due"
        # The late waits fall due while the bouncer is down: their due times are moved
        # into the past in its file, instead of waiting for them on the real clock.
        overdue = time.time() - 1
        with sqlite3.connect(tmp_path / "waits.db") as db:
            marks = ", ".join("?" * len(late))
            db.execute(
                f"UPDATE waits SET due_at = ?, next_at = ? WHERE id IN ({marks})",
                (overdue, overdue, *late),
            )
        db.close()
        with process(bouncer_command(tmp_path, port)) as bouncer:
            restarted = time.monotonic()

            async def all_recorded() -> bool:
                assert bouncer.poll() is None, "the restarted bouncer exited"
                with sqlite3.connect(tmp_path / "waits.db") as db:
                    (pending,) = db.execute(
                        "SELECT COUNT(*) FROM waits WHERE status != 'delivered'"
                    ).fetchone()
                db.close()
                return bool(pending == 0)

            await until(all_recorded, "every wait to be delivered after the restart")
    finally:
        await receiver.stop()
    assert set(received) == set(early) | set(late)
    assert all(received[wait_id] == 1 for wait_id in recorded), "a recorded success repeated"
    # Overdue after the restart, the late ones went out at once, not a minimum delay later.
    assert all(arrived[wait_id] - restarted < 5 for wait_id in late)
