"""Proxy-fetch through a whole ``ActorSystem`` against a real uvicorn server on 127.0.0.1.

``test_fetch_e2e.py`` covers the ``FetchDispatcher`` on its own; here every request is
recorded by ``continue_(..., strategy="proxy-fetch")`` in an actor's turn, stored in a SQLite
file, sent after the commit, and its outcome replayed as a new turn at ``c.result`` or
``c.error``. The server counts attempts per ``Idempotency-Key``, which must be the
continuation id. The system runs on a ``ManualClock``: ``drain()`` waits for the requests
out and runs their handlers; the system's own timeouts move only with ``advance()``, while
the fetch deadline and backoff run in real time (kept to milliseconds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from continuation import (
    Actor,
    ActorSystem,
    Continuation,
    ContinuationStatus,
    FetchError,
    FetchRequest,
    FetchResponse,
    ManualClock,
    RetryPolicy,
)

from .conftest import Running, start_server
from .test_fetch_e2e import Target

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, jitter=0.5)
BODY_LIMIT = 4096
CHUNK = 1024


@dataclass
class Upstream(Target):
    """The server's state, shared with the tests (uvicorn runs in the test's event loop):
    ``test_fetch_e2e``'s endpoints, with a hang the test can end and a body over the
    system's limit."""

    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def ok(self, request: Request) -> Response:
        attempt = self.attempt(request)
        return JSONResponse({"key": request.headers.get("idempotency-key"), "attempt": attempt})

    async def hang(self, request: Request) -> Response:
        """Hangs until the client goes away or the test sets ``release``; with ``?once``,
        only the first attempt hangs."""
        if self.attempt(request) > 1 and "once" in request.query_params:
            return PlainTextResponse("answered at last")
        await request.receive()  # the (empty) request body
        self.hanging.set()
        gone = asyncio.ensure_future(request.receive())  # returns when the client goes away
        released = asyncio.ensure_future(self.release.wait())
        await asyncio.wait({gone, released}, return_when=asyncio.FIRST_COMPLETED)
        for waiter in (gone, released):
            waiter.cancel()
        if gone.done() and not gone.cancelled() and gone.result()["type"] == "http.disconnect":
            self.disconnected.set()
            return Response(status_code=204)  # nobody is listening any more
        return PlainTextResponse("too late")

    async def big(self, request: Request) -> Response:
        """A body over the limit: streamed without a length, or declared up front."""
        self.attempt(request)
        if "declared" in request.query_params:
            return Response(b"x" * (4 * BODY_LIMIT), media_type="application/octet-stream")

        async def chunks() -> AsyncIterator[bytes]:
            while self.chunks_sent < 1000:
                self.chunks_sent += 1
                yield b"x" * CHUNK
                await asyncio.sleep(0)  # lets Starlette see the client go away

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    def app(self) -> Starlette:
        endpoints = [self.ok, self.flaky, self.busy, self.missing, self.hang, self.big]
        return Starlette(routes=[Route(f"/{e.__name__}", e) for e in endpoints])


@dataclass
class Site:
    upstream: Upstream
    running: Running

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.running.port}{path}"


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    upstream = Upstream()
    running = await start_server(upstream.app())
    yield Site(upstream, running)
    await running.stop()


class Rates(Actor):
    """Fetches a URL after its turn; each handler appends one entry to the ``log`` key."""

    def fetch(self, url: str, *, errors: bool = True, **options: Any) -> str:
        c = Continuation(self)
        return self.continue_(
            c.fetched(c.result),
            c.failed(c.error) if errors else None,
            strategy="proxy-fetch",
            request=FetchRequest(url=url),
            **options,
        )

    def fetched(self, response: FetchResponse) -> None:
        is_json = response.headers.get("content-type") == "application/json"
        body = response.json() if is_json else response.text
        self._note("ok", response.status, body)

    def failed(self, error: BaseException) -> None:
        if isinstance(error, FetchError):
            self._note("FetchError", error.status, error.attempts, error.cause)
        else:
            self._note(type(error).__name__, str(error))

    def log(self) -> list[Any]:
        return list(self.storage.get("log", []))

    def _note(self, *entry: Any) -> None:
        self.storage.put("log", [*self.storage.get("log", []), entry])


OpenSystem = Callable[..., ActorSystem]


@pytest.fixture
async def open_system(tmp_path: Path) -> AsyncIterator[OpenSystem]:
    """Open systems on one SQLite file and one manual clock; all are closed at the end."""
    clock = ManualClock()
    opened: list[ActorSystem] = []

    def open_(**options: Any) -> ActorSystem:
        options.setdefault("retry", FAST)
        system = ActorSystem(tmp_path / "rates.db", actors=[Rates], clock=clock, **options)
        opened.append(system)
        return system

    yield open_
    for system in opened:
        await system.aclose()


async def log_of(system: ActorSystem) -> list[Any]:
    return await system.get(Rates, "eur").log()  # type: ignore[no-any-return]


async def events_of(system: ActorSystem, cid: str) -> list[str]:
    return [event.event for event in (await system.continuation(cid)).audit]


async def test_a_fetch_delivers_the_response_to_its_handler_once(
    site: Site, open_system: OpenSystem
) -> None:
    async with open_system() as system:
        cid = await system.get(Rates, "eur").fetch(site.url("/ok"))
        await system.drain()
        assert await log_of(system) == [("ok", 200, {"key": cid, "attempt": 1})]
        assert site.upstream.attempts == {cid: 1}
        info = await system.continuation(cid)
        assert info.status == ContinuationStatus.COMPLETED
        assert "proxy-fetch result received" in await events_of(system, cid)


async def test_503_then_success_is_retried_with_the_continuation_id_as_key(
    site: Site, open_system: OpenSystem
) -> None:
    async with open_system() as system:
        cid = await system.get(Rates, "eur").fetch(site.url("/flaky?fails=2"))
        await system.drain()
        assert site.upstream.attempts == {cid: 3}
        assert await log_of(system) == [("ok", 200, {"attempt": 3})]


async def test_503_on_every_attempt_is_a_fetch_error_with_the_last_status(
    site: Site, open_system: OpenSystem
) -> None:
    async with open_system() as system:
        # The continuation's own retry= replaces the system's policy for its requests.
        retry = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)
        cid = await system.get(Rates, "eur").fetch(site.url("/flaky?fails=99"), retry=retry)
        await system.drain()
        assert site.upstream.attempts == {cid: 3}
        assert await log_of(system) == [("FetchError", 503, 3, None)]


async def test_retry_after_sets_the_wait_instead_of_the_backoff(
    site: Site, open_system: OpenSystem
) -> None:
    # The policy's own backoff (30 s) does not fit in the 10 s deadline: only the server's
    # Retry-After: 0 lets the second attempt happen at once.
    slow = RetryPolicy(max_attempts=2, base_delay=30, max_delay=60, jitter=0)
    async with open_system() as system:
        rates = system.get(Rates, "eur")
        started = time.monotonic()
        soon = await rates.fetch(site.url("/busy?after=0"), retry=slow, timeout=10)
        await system.drain()
        assert time.monotonic() - started < 5
        assert site.upstream.attempts[soon] == 2
        assert await log_of(system) == [("ok", 200, "welcome back")]
        # A Retry-After past the deadline fails at once instead of sleeping into it.
        late = await rates.fetch(site.url("/busy?after=30"), retry=slow, timeout=10)
        await system.drain()
        assert time.monotonic() - started < 5
        assert site.upstream.attempts[late] == 1
        _, status, attempts, cause = (await log_of(system))[-1]
        assert (status, attempts) == (429, 1)
        assert cause.startswith("TimeoutError: the 10 s deadline leaves no time for a retry")


async def test_a_404_is_a_result_not_an_error(site: Site, open_system: OpenSystem) -> None:
    async with open_system() as system:
        cid = await system.get(Rates, "eur").fetch(site.url("/missing"))
        await system.drain()
        assert await log_of(system) == [("ok", 404, "no such thing")]
        assert site.upstream.attempts == {cid: 1}  # a 4xx is final: no retry


@pytest.mark.parametrize("query", ["", "?declared"])
async def test_a_body_over_max_fetch_body_is_a_fetch_error(
    site: Site, open_system: OpenSystem, query: str
) -> None:
    async with open_system(max_fetch_body=BODY_LIMIT) as system:
        cid = await system.get(Rates, "eur").fetch(site.url(f"/big{query}"))
        await system.drain()
        assert await log_of(system) == [
            ("FetchError", 200, 1, f"the body is larger than the {BODY_LIMIT} byte limit")
        ]
        assert site.upstream.attempts == {cid: 1}
        assert site.upstream.chunks_sent < 100  # the stream was cut well before its end


async def test_a_fetch_hanging_past_its_deadline_fails_once(
    site: Site, open_system: OpenSystem
) -> None:
    async with open_system() as system:
        started = time.monotonic()
        cid = await system.get(Rates, "eur").fetch(site.url("/hang"), timeout=0.3)
        await system.drain()  # the fetch's own deadline runs in real time
        assert 0.25 < time.monotonic() - started < 5
        assert await log_of(system) == [
            ("FetchError", None, 1, "TimeoutError: no response before the deadline")
        ]
        await asyncio.wait_for(site.upstream.disconnected.wait(), 5)
        # The system's timeout, due at the same instant on its clock, finds the
        # continuation finished: nothing is delivered twice.
        await system.advance(60)
        assert len(await log_of(system)) == 1
        assert (await system.continuation(cid)).status == ContinuationStatus.COMPLETED


async def test_the_system_timeout_fires_once_and_a_late_answer_is_ignored(
    site: Site, open_system: OpenSystem
) -> None:
    async with open_system() as system:
        cid = await system.get(Rates, "eur").fetch(site.url("/hang"), timeout=5)
        await asyncio.wait_for(site.upstream.hanging.wait(), 5)
        await system.advance(5)  # the system's timeout, on its own clock
        timed_out = [("TimeoutError", "the proxy-fetch got no outcome within 5.0 s")]
        assert await log_of(system) == timed_out
        site.upstream.release.set()  # the server answers now, too late
        await system.drain()
        await system.advance(60)
        assert await log_of(system) == timed_out
        assert site.upstream.attempts == {cid: 1}
        assert (await system.continuation(cid)).status == ContinuationStatus.COMPLETED
        # Either the request was aborted before the answer came, or the answer came and
        # was recorded as ignored.
        late = "late outcome ignored" in await events_of(system, cid)
        assert late or site.upstream.disconnected.is_set()


async def test_the_system_timeout_aborts_the_request(site: Site, open_system: OpenSystem) -> None:
    async with open_system() as system:
        await system.get(Rates, "eur").fetch(site.url("/hang"), timeout=5)
        await asyncio.wait_for(site.upstream.hanging.wait(), 5)
        await system.advance(5)
        # Nobody waits for the answer any more: the request is cut at once, not left to run
        # into its own (real-time) deadline.
        await asyncio.wait_for(site.upstream.disconnected.wait(), 1)
        assert len(await log_of(system)) == 1


async def test_without_an_error_chain_a_failed_fetch_is_dead_at_once(
    site: Site, open_system: OpenSystem
) -> None:
    async with open_system() as system:
        cid = await system.get(Rates, "eur").fetch(site.url("/flaky?fails=99"), errors=False)
        await system.drain()
        info = await system.continuation(cid)
        # The request was retried by the policy; the continuation is not retried again.
        assert (info.status, info.attempts) == (ContinuationStatus.DEAD, 1)
        assert site.upstream.attempts == {cid: FAST.max_attempts}
        assert info.last_error == (
            f"FetchError: fetch of {site.url('/flaky?fails=99')} failed after"
            f" {FAST.max_attempts} attempts: HTTP 503"
        )
        assert await log_of(system) == []


async def test_a_fetch_in_flight_at_shutdown_is_sent_again_and_fires_once(
    site: Site, open_system: OpenSystem
) -> None:
    first = open_system()
    async with first:
        cid = await first.get(Rates, "eur").fetch(site.url("/hang?once"), timeout=60)
        await asyncio.wait_for(site.upstream.hanging.wait(), 5)
    # Closing aborted the request: nothing of it is stored, and the server saw it go.
    await asyncio.wait_for(site.upstream.disconnected.wait(), 5)
    async with open_system() as second:
        await second.drain()
        assert site.upstream.attempts == {cid: 2}  # the same Idempotency-Key both times
        assert await log_of(second) == [("ok", 200, "answered at last")]
        assert (await second.continuation(cid)).status == ContinuationStatus.COMPLETED
    async with open_system() as third:  # nothing is left to send
        await third.drain()
        assert site.upstream.attempts == {cid: 2}
        assert len(await log_of(third)) == 1
