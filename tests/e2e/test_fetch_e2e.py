"""The proxy-fetch executor against a real uvicorn server on 127.0.0.1.

The app below has one endpoint per behaviour the dispatcher must handle: success, 503 then
success, 429 with ``Retry-After``, a request that hangs until the client goes away, 404, a
redirect, and bodies too large to load (endless stream, or a large ``Content-Length``). The
server counts attempts per ``Idempotency-Key``, so each test sees only its own requests.
Backoff delays are a few milliseconds, so the file runs in a few seconds (most of it is
starting and stopping uvicorn for each test).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from continuation import RetryPolicy
from continuation._fetch import FetchDispatcher, FetchError, FetchRequest

from .conftest import Running, free_port, start_server

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, jitter=0.5)
CHUNK = 64 * 1024
ENDLESS_CHUNKS = 2048  # 128 MB: "endless" to a client with a 1 MB limit


@dataclass
class Target:
    """The test server's state, shared with the tests (uvicorn runs in the test's loop)."""

    attempts: Counter[str] = field(default_factory=Counter)
    hanging: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    chunks_sent: int = 0
    stream_closed: asyncio.Event = field(default_factory=asyncio.Event)

    def attempt(self, request: Request) -> int:
        key = request.headers.get("idempotency-key", "")
        self.attempts[key] += 1
        return self.attempts[key]

    async def echo(self, request: Request) -> Response:
        attempt = self.attempt(request)
        return JSONResponse(
            {
                "method": request.method,
                "key": request.headers.get("idempotency-key"),
                "content_type": request.headers.get("content-type"),
                "body": (await request.body()).decode(),
                "attempt": attempt,
            }
        )

    async def flaky(self, request: Request) -> Response:
        attempt = self.attempt(request)
        if attempt <= int(request.query_params["fails"]):
            return PlainTextResponse("try again", status_code=503)
        return JSONResponse({"attempt": attempt})

    async def busy(self, request: Request) -> Response:
        if self.attempt(request) == 1:
            headers = {"Retry-After": request.query_params["after"]}
            return PlainTextResponse("slow down", status_code=429, headers=headers)
        return PlainTextResponse("welcome back")

    async def missing(self, request: Request) -> Response:
        self.attempt(request)
        return PlainTextResponse("no such thing", status_code=404)

    async def hang(self, request: Request) -> Response:
        self.attempt(request)
        await request.receive()  # the (empty) request body
        self.hanging.set()
        message = await request.receive()  # blocks until the client goes away
        if message["type"] == "http.disconnect":
            self.disconnected.set()
        return Response(status_code=204)  # pragma: no cover - nobody is listening any more

    async def endless(self, request: Request) -> Response:
        self.attempt(request)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while self.chunks_sent < ENDLESS_CHUNKS:
                    self.chunks_sent += 1
                    yield b"x" * CHUNK
                    # Once the client is gone uvicorn's send returns at once; without this
                    # the loop would never let Starlette see the disconnect.
                    await asyncio.sleep(0)
            finally:
                self.stream_closed.set()

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    async def declared(self, request: Request) -> Response:
        self.attempt(request)
        return Response(b"x" * (3 * 2**20), media_type="application/octet-stream")

    async def redirect(self, request: Request) -> Response:
        return Response(status_code=302, headers={"Location": "/echo"})

    def app(self) -> Starlette:
        def route(path: str, endpoint: object, *methods: str) -> Route:
            return Route(path, endpoint, methods=list(methods or ["GET"]))  # type: ignore[arg-type]

        return Starlette(
            routes=[
                route("/echo", self.echo, "GET", "POST"),
                route("/flaky", self.flaky),
                route("/busy", self.busy),
                route("/missing", self.missing),
                route("/hang", self.hang),
                route("/endless", self.endless),
                route("/declared", self.declared),
                route(
                    "/redirect", lambda _: Response(status_code=302, headers={"Location": "/echo"})
                ),
            ]
        )


@dataclass
class Site:
    target: Target
    running: Running

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.running.port}{path}"


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    target = Target()
    running = await start_server(target.app())
    yield Site(target, running)
    await running.stop()


@pytest.fixture
async def fetcher() -> AsyncIterator[FetchDispatcher]:
    async with FetchDispatcher(concurrency=8, max_body_bytes=2**20) as dispatcher:
        yield dispatcher


async def test_a_successful_post_carries_its_body_and_idempotency_key(
    site: Site, fetcher: FetchDispatcher
) -> None:
    request = FetchRequest(url=site.url("/echo"), method="post", body={"amount": 12})
    response = await fetcher.fetch(request, idempotency_key="e2e-ok", timeout=5, retry=FAST)
    assert response.ok
    assert response.json() == {
        "method": "POST",
        "key": "e2e-ok",
        "content_type": "application/json",
        "body": '{"amount":12}',
        "attempt": 1,
    }
    assert response.headers["content-type"] == "application/json"


async def test_an_httpx_request_converted_to_a_fetch_request_is_sent_the_same(
    site: Site, fetcher: FetchDispatcher
) -> None:
    original = httpx.Request("POST", site.url("/echo"), content=b"raw", headers={"X-A": "1"})
    request = FetchRequest.from_httpx(original)
    response = await fetcher.fetch(request, idempotency_key="e2e-httpx", timeout=5, retry=FAST)
    assert response.json()["body"] == "raw"


async def test_503_twice_then_success_is_retried_with_the_same_key(
    site: Site, fetcher: FetchDispatcher
) -> None:
    request = FetchRequest(url=site.url("/flaky?fails=2"))
    response = await fetcher.fetch(request, idempotency_key="e2e-flaky", timeout=5, retry=FAST)
    assert response.json() == {"attempt": 3}
    assert site.target.attempts["e2e-flaky"] == 3


async def test_503_past_the_last_attempt_is_a_fetch_error_with_the_status(
    site: Site, fetcher: FetchDispatcher
) -> None:
    request = FetchRequest(url=site.url("/flaky?fails=99"))
    with pytest.raises(FetchError) as caught:
        await fetcher.fetch(request, idempotency_key="e2e-down", timeout=5, retry=FAST)
    assert (caught.value.status, caught.value.attempts, caught.value.cause) == (503, 4, None)
    assert site.target.attempts["e2e-down"] == 4


async def test_retry_after_from_the_server_sets_the_wait(site: Site) -> None:
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await asyncio.sleep(delay)

    retry = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.2)
    async with FetchDispatcher(sleep=sleep) as fetcher:
        request = FetchRequest(url=site.url("/busy?after=0"))
        response = await fetcher.fetch(request, idempotency_key="e2e-0", timeout=5, retry=retry)
        assert response.text == "welcome back"
        request = FetchRequest(url=site.url("/busy?after=30"))
        response = await fetcher.fetch(request, idempotency_key="e2e-30", timeout=5, retry=retry)
        assert response.text == "welcome back"
    assert waits == [0.0, 0.2]  # as told; then as told but capped by max_delay


async def test_a_404_is_a_result_after_one_attempt(site: Site, fetcher: FetchDispatcher) -> None:
    request = FetchRequest(url=site.url("/missing"))
    response = await fetcher.fetch(request, idempotency_key="e2e-404", timeout=5, retry=FAST)
    assert (response.status, response.text, response.ok) == (404, "no such thing", False)
    assert site.target.attempts["e2e-404"] == 1


async def test_a_redirect_is_followed(site: Site, fetcher: FetchDispatcher) -> None:
    request = FetchRequest(url=site.url("/redirect"))
    response = await fetcher.fetch(request, idempotency_key="e2e-301", timeout=5, retry=FAST)
    assert response.url == site.url("/echo")
    assert response.json()["key"] == "e2e-301"


async def test_a_request_hanging_past_the_timeout_fails_at_the_deadline(
    site: Site, fetcher: FetchDispatcher
) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        await fetcher.fetch(
            FetchRequest(url=site.url("/hang")), idempotency_key="e2e-hang", timeout=0.3, retry=FAST
        )
    elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 2.0
    assert caught.value.cause == "TimeoutError: no response before the deadline"
    assert caught.value.status is None
    await asyncio.wait_for(site.target.disconnected.wait(), 5)


async def test_cancelling_a_fetch_aborts_the_request_on_the_server(
    site: Site, fetcher: FetchDispatcher
) -> None:
    task = asyncio.create_task(
        fetcher.fetch(
            FetchRequest(url=site.url("/hang")),
            idempotency_key="e2e-cancel",
            timeout=60,
            retry=FAST,
        )
    )
    await asyncio.wait_for(site.target.hanging.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    await asyncio.wait_for(site.target.disconnected.wait(), 5)


async def test_an_endless_body_is_refused_and_the_stream_is_cut(
    site: Site, fetcher: FetchDispatcher
) -> None:
    request = FetchRequest(url=site.url("/endless"))
    with pytest.raises(FetchError) as caught:
        await fetcher.fetch(request, idempotency_key="e2e-endless", timeout=10, retry=FAST)
    assert caught.value.status == 200
    assert caught.value.cause == f"the body is larger than the {2**20} byte limit"
    assert site.target.attempts["e2e-endless"] == 1
    await asyncio.wait_for(site.target.stream_closed.wait(), 5)
    assert site.target.chunks_sent < ENDLESS_CHUNKS // 2  # stopped well short of 128 MB


async def test_a_body_declared_too_large_is_refused(site: Site, fetcher: FetchDispatcher) -> None:
    request = FetchRequest(url=site.url("/declared"))
    with pytest.raises(FetchError, match="larger than the 1048576 byte limit"):
        await fetcher.fetch(request, idempotency_key="e2e-declared", timeout=10, retry=FAST)


async def test_a_refused_connection_is_retried_then_a_fetch_error_with_the_cause(
    fetcher: FetchDispatcher,
) -> None:
    request = FetchRequest(url=f"http://127.0.0.1:{free_port()}/nothing-listens")
    with pytest.raises(FetchError) as caught:
        await fetcher.fetch(request, idempotency_key="e2e-refused", timeout=5, retry=FAST)
    assert caught.value.attempts == 4
    assert caught.value.status is None
    assert (caught.value.cause or "").startswith("ConnectError: ")


async def test_many_fetches_at_once_share_the_bounded_client(
    site: Site, fetcher: FetchDispatcher
) -> None:
    responses = await asyncio.gather(
        *[
            fetcher.fetch(
                FetchRequest(url=site.url("/echo")),
                idempotency_key=f"many-{n}",
                timeout=10,
                retry=FAST,
            )
            for n in range(100)
        ]
    )
    assert sorted(r.json()["key"] for r in responses) == sorted(f"many-{n}" for n in range(100))
