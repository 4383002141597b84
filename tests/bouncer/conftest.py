"""Fixtures for the bouncer tests: an in-process bouncer on a manual clock whose callbacks go
to an in-process receiver, and the receiver itself (it checks every signature it gets)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from continuation import ManualClock, RetryPolicy
from continuation.bouncer import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Bouncer,
    create_bouncer_app,
    verify_signature,
)

KEY = b"bouncer-test-signing-key-0123456789"
TOKEN = "test-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CALLBACK = "http://receiver/cb"
START = 1_800_000_000.0
RETRY = RetryPolicy(base_delay=10.0, max_delay=80.0, jitter=0.5)


@dataclass
class Callback:
    """One callback the receiver got."""

    body: dict[str, Any]
    timestamp: str
    signature: str
    attempt: str


@dataclass
class Receiver:
    """An ASGI callback receiver: it verifies each callback's signature (against ``clock``),
    records it, and answers with the next of ``statuses`` (200 once they run out)."""

    clock: Callable[[], float]
    statuses: list[int] = field(default_factory=list)
    calls: list[Callback] = field(default_factory=list)
    hold: asyncio.Event | None = None
    active: int = 0
    most_active: int = 0

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/cb", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        timestamp = request.headers[TIMESTAMP_HEADER]
        signature = request.headers[SIGNATURE_HEADER]
        verify_signature(KEY, timestamp, body, signature, now=self.clock())
        self.calls.append(
            Callback(json.loads(body), timestamp, signature, request.headers["x-bouncer-attempt"])
        )
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            if self.hold is not None:
                await self.hold.wait()
            else:
                await asyncio.sleep(0)
        finally:
            self.active -= 1
        status = self.statuses.pop(0) if self.statuses else 200
        return Response(b"nope" if status >= 300 else b"ok", status)

    def ids(self) -> list[str]:
        return [call.body["id"] for call in self.calls]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=START)


@pytest.fixture
def receiver(clock: ManualClock) -> Receiver:
    return Receiver(clock.now)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "waits.db")


@dataclass
class Served:
    """A started bouncer app, a client authorised to use it, and its ``Bouncer``."""

    app: Starlette
    client: httpx.AsyncClient
    clock: ManualClock

    @property
    def bouncer(self) -> Bouncer:
        bouncer: Bouncer = self.app.state.bouncer
        return bouncer

    async def register(self, **body: Any) -> dict[str, Any]:
        body.setdefault("callback", CALLBACK)
        if "at" not in body:
            body.setdefault("delay", 60)
        response = await self.client.post("/waits", json=body)
        assert response.status_code in (200, 201), response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def state(self, wait_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/waits/{wait_id}")
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def advance(self, seconds: float) -> None:
        """Move the clock and deliver everything that is due then."""
        self.clock.set(self.clock.now() + seconds)
        await self.bouncer.drain()


def make_app(db: str, clock: ManualClock, receiver: Receiver, **options: Any) -> Starlette:
    options.setdefault("retry", RETRY)
    options.setdefault("rng", random.Random(7))
    options.setdefault("transport", httpx.ASGITransport(app=receiver.app))
    return create_bouncer_app(
        db, tokens=[TOKEN, "second-token-for-rotation"], signing_key=KEY, clock=clock, **options
    )


@pytest.fixture
def open_bouncer(db: str, clock: ManualClock, receiver: Receiver) -> Callable[..., Any]:
    """``async with open_bouncer(**options) as served``: a started bouncer on the test's
    database, clock and receiver."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def open_(**options: Any) -> AsyncIterator[Served]:
        app = make_app(options.pop("database", db), clock, receiver, **options)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.state.bouncer,
            httpx.AsyncClient(transport=transport, base_url="http://bouncer", headers=AUTH) as c,
        ):
            yield Served(app, c, clock)

    return open_


@pytest.fixture
async def served(open_bouncer: Callable[..., Any]) -> AsyncIterator[Served]:
    async with open_bouncer() as served:
        yield served
