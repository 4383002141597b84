"""The proxy-fetch executor on httpx's mock transport: retries, deadline, limits, records.

Backoff never really sleeps: the dispatcher gets a fake ``sleep`` that records each delay and
moves a fake monotonic clock by it, so the deadline arithmetic is exact.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from continuation import ContinuationError, InvalidArgumentError, RetryPolicy
from continuation._fetch import (
    FetchDispatcher,
    FetchError,
    FetchRequest,
    FetchResponse,
    parse_retry_after,
)
from operation_chain import Codec, RemoteError
from operation_chain._registry import TypeRegistry

Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]

URL = "https://api.test/rates"
NO_JITTER = RetryPolicy(max_attempts=3, base_delay=1.0, max_delay=10.0, jitter=0.0)
SAFE = Codec()
TRUSTED = Codec(trusted=True)


class FakeTime:
    """A monotonic clock that moves only when the dispatcher sleeps, recording each sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.delays: list[float] = []
        self.extra = 0.0  # added to each sleep, as an overloaded event loop would

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay + self.extra


class Server:
    """A scripted mock server: answers with ``replies`` in turn (the last one repeats) and
    keeps every request it saw."""

    def __init__(self, *replies: httpx.Response | Exception) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply


def dispatcher(handler: Handler, clock: FakeTime | None = None, **options: Any) -> FetchDispatcher:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), follow_redirects=True)
    if clock is None:
        return FetchDispatcher(client=client, rng=random.Random(0), **options)
    return FetchDispatcher(
        client=client, sleep=clock.sleep, clock=clock.monotonic, rng=random.Random(0), **options
    )


async def fetch(
    handler: Handler,
    request: FetchRequest | None = None,
    *,
    clock: FakeTime | None = None,
    timeout: float | None = 60.0,
    retry: RetryPolicy = NO_JITTER,
    **options: Any,
) -> FetchResponse:
    async with dispatcher(handler, clock or FakeTime(), **options) as fetcher:
        return await fetcher.fetch(
            request or FetchRequest(url=URL), idempotency_key="cid-1", timeout=timeout, retry=retry
        )


def reply(status: int, **kwargs: Any) -> httpx.Response:
    return httpx.Response(status, **kwargs)


# -- results -------------------------------------------------------------------------------


async def test_a_2xx_response_is_the_result_with_lowercased_headers() -> None:
    server = Server(reply(200, json={"eur": 1.08}, headers={"X-Rate": "fresh"}))
    response = await fetch(server)
    assert response.status == 200
    assert response.ok
    assert response.json() == {"eur": 1.08}
    assert response.headers["x-rate"] == "fresh"
    assert response.headers["content-type"] == "application/json"
    assert response.url == URL
    assert len(server.requests) == 1


async def test_a_404_is_a_result_and_is_not_retried() -> None:
    server = Server(reply(404, text="no such rate"))
    response = await fetch(server)
    assert (response.status, response.ok, response.text) == (404, False, "no such rate")
    assert len(server.requests) == 1


async def test_repeated_response_headers_are_joined_with_commas() -> None:
    headers = [("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("Vary", "Accept")]
    response = await fetch(Server(reply(200, headers=headers)))
    assert response.headers == {"set-cookie": "a=1, b=2", "vary": "Accept"}


async def test_redirects_are_followed_and_the_final_url_is_kept() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/old":
            return reply(301, headers={"Location": "https://api.test/new"})
        return reply(200, text="moved")

    response = await fetch(handler, FetchRequest(url="https://api.test/old"))
    assert (response.url, response.text) == ("https://api.test/new", "moved")


# -- retries -------------------------------------------------------------------------------


async def test_5xx_is_retried_with_exponential_backoff_then_succeeds() -> None:
    clock = FakeTime()
    server = Server(reply(500), reply(502), reply(200, text="ok"))
    response = await fetch(server, clock=clock)
    assert response.text == "ok"
    assert clock.delays == [1.0, 2.0]
    assert len(server.requests) == 3


async def test_backoff_delays_come_from_the_retry_policy_with_its_jitter() -> None:
    clock = FakeTime()
    retry = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=1.5, jitter=0.5)
    with pytest.raises(FetchError):
        await fetch(Server(reply(500)), clock=clock, retry=retry)
    rng = random.Random(0)
    assert clock.delays == [retry.delay(n, rng) for n in (1, 2, 3)]


async def test_retries_stop_after_max_attempts_with_the_last_status() -> None:
    clock = FakeTime()
    server = Server(reply(500), reply(503))
    with pytest.raises(FetchError) as caught:
        await fetch(server, clock=clock)
    error = caught.value
    assert (error.status, error.cause, error.attempts, error.url) == (503, None, 3, URL)
    assert str(error) == f"fetch of {URL} failed after 3 attempts: HTTP 503"
    assert len(server.requests) == 3
    assert len(clock.delays) == 2


async def test_max_attempts_one_means_no_retry() -> None:
    server = Server(reply(503))
    with pytest.raises(FetchError, match="after 1 attempt: HTTP 503"):
        await fetch(server, retry=RetryPolicy(max_attempts=1))
    assert len(server.requests) == 1


async def test_429_waits_for_retry_after_seconds_instead_of_the_backoff() -> None:
    clock = FakeTime()
    server = Server(reply(429, headers={"Retry-After": "7"}), reply(200))
    assert (await fetch(server, clock=clock)).status == 200
    assert clock.delays == [7.0]


async def test_503_waits_for_a_retry_after_http_date() -> None:
    clock = FakeTime()
    when = datetime.now(UTC) + timedelta(seconds=9)
    server = Server(reply(503, headers={"Retry-After": format_datetime(when, usegmt=True)}))
    server.replies.append(reply(200))
    await fetch(server, clock=clock)
    [delay] = clock.delays
    assert 7.0 < delay <= 9.0  # the date has whole seconds, and a little time has passed


async def test_retry_after_is_capped_by_max_delay() -> None:
    clock = FakeTime()
    server = Server(reply(429, headers={"Retry-After": "3600"}), reply(200))
    await fetch(server, clock=clock)
    assert clock.delays == [10.0]


async def test_retry_after_on_other_5xx_statuses_is_ignored() -> None:
    clock = FakeTime()
    server = Server(reply(500, headers={"Retry-After": "7"}), reply(200))
    await fetch(server, clock=clock)
    assert clock.delays == [1.0]


async def test_an_unreadable_retry_after_falls_back_to_the_backoff() -> None:
    clock = FakeTime()
    server = Server(reply(503, headers={"Retry-After": "soon"}), reply(200))
    await fetch(server, clock=clock)
    assert clock.delays == [1.0]


def test_parse_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(None, now) is None
    assert parse_retry_after(" 120 ", now) == 120.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 -0000", now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after("٣", now) is None  # a non-ASCII digit is not delta-seconds
    assert parse_retry_after("tomorrow", now) is None


async def test_a_connection_error_after_the_last_attempt_carries_its_cause() -> None:
    server = Server(httpx.ConnectError("connection refused"))
    with pytest.raises(FetchError) as caught:
        await fetch(server)
    error = caught.value
    assert (error.status, error.attempts) == (None, 3)
    assert error.cause == "ConnectError: connection refused"
    assert "failed after 3 attempts: ConnectError: connection refused" in str(error)
    assert isinstance(error, ContinuationError)


async def test_timeouts_and_dropped_connections_are_retried() -> None:
    server = Server(httpx.ReadTimeout(""), httpx.RemoteProtocolError("eof"), reply(200))
    assert (await fetch(server)).status == 200
    assert len(server.requests) == 3


async def test_an_httpx_error_that_would_repeat_is_final_at_once() -> None:
    async def loop(request: httpx.Request) -> httpx.Response:
        return reply(302, headers={"Location": str(request.url)})

    with pytest.raises(FetchError) as caught:
        await fetch(loop)
    assert caught.value.attempts == 1
    assert (caught.value.cause or "").startswith("TooManyRedirects: ")
    assert isinstance(caught.value.__cause__, httpx.TooManyRedirects)


async def test_every_attempt_carries_the_idempotency_key() -> None:
    server = Server(reply(503), httpx.ConnectError("x"), reply(200))
    request = FetchRequest(url=URL, headers={"idempotency-key": "mine", "X-Trace": "t"})
    await fetch(server, request)
    assert [r.headers.get_list("idempotency-key") for r in server.requests] == [["cid-1"]] * 3
    assert all(r.headers["x-trace"] == "t" for r in server.requests)


# -- the deadline --------------------------------------------------------------------------


async def test_each_attempt_gets_the_time_that_remains() -> None:
    clock = FakeTime()
    server = Server(reply(500), reply(500), reply(200))
    await fetch(server, clock=clock, timeout=10.0)
    assert [r.extensions["timeout"]["read"] for r in server.requests] == [10.0, 9.0, 7.0]


@pytest.mark.parametrize("timeout", [None, math.inf])
async def test_without_a_deadline_attempts_have_no_timeout(timeout: float | None) -> None:
    clock = FakeTime()
    server = Server(reply(429, headers={"Retry-After": "3600"}), reply(500), reply(200))
    retry = RetryPolicy(max_attempts=3, base_delay=1.0, max_delay=86400.0, jitter=0.0)
    assert (await fetch(server, clock=clock, timeout=timeout, retry=retry)).ok
    assert clock.delays == [3600.0, 2.0]
    assert [r.extensions["timeout"]["read"] for r in server.requests] == [None] * 3


async def test_a_retry_that_would_start_past_the_deadline_is_not_made() -> None:
    clock = FakeTime()
    server = Server(reply(503, headers={"Retry-After": "8"}))
    with pytest.raises(FetchError) as caught:
        await fetch(server, clock=clock, timeout=5.0)
    error = caught.value
    assert (error.status, error.attempts) == (503, 1)
    assert error.cause == "TimeoutError: the 5 s deadline leaves no time for a retry"
    assert str(error).endswith("(last status 503)")
    assert clock.delays == []


async def test_the_deadline_error_names_the_last_network_error() -> None:
    server = Server(httpx.ConnectError("refused"))
    with pytest.raises(FetchError) as caught:
        await fetch(server, timeout=2.5)
    assert caught.value.cause == (
        "TimeoutError: the 2.5 s deadline leaves no time for a retry;"
        " last error ConnectError: refused"
    )
    assert caught.value.attempts == 2  # waited 1 s after the first, 2 s would pass 2.5 s


async def test_no_attempt_starts_once_the_deadline_has_passed() -> None:
    clock = FakeTime()
    clock.extra = 10.0  # the sleep overshoots, as on an overloaded loop
    server = Server(reply(500))
    with pytest.raises(FetchError, match="no response before the deadline") as caught:
        await fetch(server, clock=clock, timeout=5.0)
    assert (caught.value.attempts, caught.value.status) == (1, None)
    assert len(server.requests) == 1


async def test_a_hanging_attempt_is_cut_off_at_the_deadline() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    client = httpx.AsyncClient(transport=httpx.MockTransport(hang))
    started = time.monotonic()
    async with client, FetchDispatcher(client=client) as fetcher:
        with pytest.raises(FetchError) as caught:
            await fetcher.fetch(
                FetchRequest(url=URL), idempotency_key="k", timeout=0.05, retry=NO_JITTER
            )
    assert time.monotonic() - started < 2.0
    assert caught.value.cause == "TimeoutError: no response before the deadline"
    assert caught.value.attempts == 1


# -- body size -----------------------------------------------------------------------------


class CountingStream(httpx.AsyncByteStream):
    """A response body of ``chunks`` chunks (endless by default), counting what was read."""

    def __init__(self, chunks: int | None = None, size: int = 1024) -> None:
        self.chunks = chunks
        self.size = size
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.chunks is None or self.read < self.chunks:
            self.read += 1
            yield b"x" * self.size


async def test_a_body_over_the_limit_by_content_length_is_refused_unread() -> None:
    body = CountingStream(chunks=100)
    server = Server(reply(200, headers={"Content-Length": "102400"}, stream=body))
    with pytest.raises(FetchError) as caught:
        await fetch(server, max_body_bytes=4096)
    assert body.read == 0
    assert (caught.value.status, caught.value.attempts) == (200, 1)
    assert caught.value.cause == "the body is larger than the 4096 byte limit"


async def test_a_streamed_body_over_the_limit_is_refused_after_the_limit() -> None:
    body = CountingStream()  # endless, no Content-Length: the limit must stop the reading
    with pytest.raises(FetchError, match="larger than the 4096 byte limit"):
        await fetch(Server(reply(200, stream=body)), max_body_bytes=4096)
    assert body.read == 5


async def test_a_body_of_exactly_the_limit_is_accepted() -> None:
    body = CountingStream(chunks=4)
    response = await fetch(Server(reply(200, stream=body)), max_body_bytes=4096)
    assert response.body == b"x" * 4096


async def test_a_4xx_body_over_the_limit_is_refused_too() -> None:
    with pytest.raises(FetchError) as caught:
        await fetch(Server(reply(404, content=b"x" * 20)), max_body_bytes=10)
    assert caught.value.status == 404


# -- concurrency and cancellation ------------------------------------------------------------


async def test_attempts_in_flight_are_bounded_by_concurrency() -> None:
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.002)
        in_flight -= 1
        return reply(200)

    async with dispatcher(handler, concurrency=3) as fetcher:
        responses = await asyncio.gather(
            *[
                fetcher.fetch(
                    FetchRequest(url=URL), idempotency_key=str(n), timeout=5, retry=NO_JITTER
                )
                for n in range(12)
            ]
        )
    assert [r.status for r in responses] == [200] * 12
    assert peak == 3


async def test_cancelling_the_fetch_aborts_the_request_in_flight() -> None:
    started, aborted = asyncio.Event(), asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            aborted.set()
        raise AssertionError("unreachable")

    async with dispatcher(hang) as fetcher:
        task = asyncio.create_task(
            fetcher.fetch(FetchRequest(url=URL), idempotency_key="k", timeout=60, retry=NO_JITTER)
        )
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert aborted.is_set()


# -- request encoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content", "content_type"),
    [
        (None, b"", None),
        (b"\x00raw", b"\x00raw", None),
        ("héllo", "héllo".encode(), "text/plain; charset=utf-8"),
        ({"q": "é", "n": [1, 2.5, None]}, b'{"q":"\xc3\xa9","n":[1,2.5,null]}', "application/json"),
        (7, b"7", "application/json"),
    ],
)
async def test_bodies_are_sent_with_their_content_type(
    body: Any, content: bytes, content_type: str | None
) -> None:
    server = Server(reply(200))
    await fetch(server, FetchRequest(url=URL, method="POST", body=body))
    [sent] = server.requests
    assert sent.method == "POST"
    assert sent.content == content
    assert sent.headers.get("content-type") == content_type


async def test_a_given_content_type_is_kept() -> None:
    server = Server(reply(200))
    headers = {"content-TYPE": "application/vnd.api+json"}
    await fetch(server, FetchRequest(url=URL, method="PUT", headers=headers, body={"a": 1}))
    assert server.requests[0].headers.get_list("content-type") == ["application/vnd.api+json"]


# -- FetchRequest --------------------------------------------------------------------------


def test_a_fetch_request_normalises_the_method() -> None:
    request = FetchRequest(url="http://127.0.0.1:8000/x?y=1", method="patch")
    assert (request.method, request.headers, request.body) == ("PATCH", {}, None)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"url": "ftp://files.test/a"}, "absolute http or https URL"),
        ({"url": "/relative/path"}, "absolute http or https URL"),
        ({"url": "http:///no-host"}, "absolute http or https URL"),
        ({"url": "http://[::1"}, "not a valid URL"),
        ({"url": URL, "method": "GE T"}, "is not an HTTP method"),
        ({"url": URL, "method": ""}, "is not an HTTP method"),
        ({"url": URL, "headers": {"bad name": "x"}}, "not a valid header name"),
        ({"url": URL, "headers": {"X-A": "x\r\nInjected: 1"}}, "line break or NUL"),
        ({"url": URL, "headers": {"X-A": 1}}, "valid string"),
        ({"url": URL, "body": {"x": math.nan}}, "JSON body cannot be encoded"),
        ({"url": URL, "body": (1, 2)}, "body"),
        ({"url": URL, "timeout": 3}, "Extra inputs are not permitted"),
        ({"url": 5}, "valid string"),
    ],
)
def test_a_bad_fetch_request_is_refused_by_validation(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        FetchRequest(**fields)


def test_a_fetch_request_is_immutable() -> None:
    request = FetchRequest(url=URL)
    with pytest.raises(ValidationError, match="frozen"):
        request.url = "http://elsewhere.test"  # type: ignore[misc]


def test_from_httpx_takes_method_url_headers_and_body() -> None:
    request = httpx.Request(
        "post",
        "https://api.test/charge?x=1",
        json={"amount": 5},
        headers=[("X-Tag", "a"), ("x-tag", "b")],
    )
    converted = FetchRequest.from_httpx(request)
    assert converted == FetchRequest(
        url="https://api.test/charge?x=1",
        method="POST",
        headers={"x-tag": "a, b", "content-type": "application/json"},
        body=b'{"amount":5}',
    )


def test_from_httpx_of_a_bodiless_request_has_no_body() -> None:
    converted = FetchRequest.from_httpx(httpx.Request("GET", URL))
    assert (converted.body, converted.headers) == (None, {})


def test_from_httpx_refuses_an_async_streaming_body() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"  # pragma: no cover - never read

    with pytest.raises(InvalidArgumentError, match="streaming body"):
        FetchRequest.from_httpx(httpx.Request("POST", URL, content=chunks()))


# -- FetchResponse -------------------------------------------------------------------------


def response_with(content_type: str | None, body: bytes) -> FetchResponse:
    headers = {} if content_type is None else {"content-type": content_type}
    return FetchResponse(status=200, headers=headers, body=body, url=URL)


@pytest.mark.parametrize(
    ("content_type", "body", "text"),
    [
        (None, "été".encode(), "été"),
        ("text/plain; charset=ISO-8859-1", "été".encode("latin-1"), "été"),
        ('text/plain; format=flowed; Charset="latin-1"', b"\xe9", "é"),
        ("text/plain; charset=no-such-codec", "été".encode(), "été"),
        ("text/plain; charset", b"ok", "ok"),
        ("text/plain", b"\xff", "\ufffd"),
    ],
)
def test_text_decodes_by_the_charset_of_the_content_type(
    content_type: str | None, body: bytes, text: str
) -> None:
    assert response_with(content_type, body).text == text


@pytest.mark.parametrize(("status", "ok"), [(199, False), (200, True), (299, True), (304, False)])
def test_ok_means_2xx(status: int, ok: bool) -> None:
    assert FetchResponse(status=status, headers={}, body=b"", url=URL).ok is ok


def test_json_parses_the_body_and_refuses_what_is_not_json() -> None:
    assert response_with("application/json", b'{"a": [1]}').json() == {"a": [1]}
    with pytest.raises(json.JSONDecodeError):
        response_with("text/html", b"<html>").json()


def test_the_repr_shows_the_body_size_not_the_body() -> None:
    response = FetchResponse(status=200, headers={}, body=b"x" * 5000, url=URL)
    assert repr(response) == f"FetchResponse(status=200, url={URL!r}, body=<5000 bytes>)"


# -- FetchError ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (FetchError(URL, 1, 503), f"fetch of {URL} failed after 1 attempt: HTTP 503"),
        (FetchError(URL, 2, None, "ConnectError: no"), "failed after 2 attempts: ConnectError: no"),
        (FetchError(URL, 2, 200, "too big"), "failed after 2 attempts: too big (last status 200)"),
    ],
)
def test_a_fetch_error_says_what_failed(error: FetchError, message: str) -> None:
    assert message in str(error)


# -- the codec -----------------------------------------------------------------------------


@pytest.mark.parametrize("codec", [SAFE, TRUSTED], ids=["safe", "trusted"])
@pytest.mark.parametrize(
    "request_",
    [
        FetchRequest(url=URL),
        FetchRequest(url=URL, method="POST", headers={"A": "b"}, body=b"\x00\xff"),
        FetchRequest(url=URL, method="POST", body="text"),
        FetchRequest(url=URL, method="POST", body={"$obj": ["x", {}], "list": [1, None, True]}),
    ],
)
def test_a_fetch_request_round_trips_through_the_codec(
    codec: Codec, request_: FetchRequest
) -> None:
    assert codec.loads(codec.dumps(request_)) == request_


@pytest.mark.parametrize("codec", [SAFE, TRUSTED], ids=["safe", "trusted"])
def test_a_fetch_response_round_trips_through_the_codec(codec: Codec) -> None:
    response = FetchResponse(status=404, headers={"a": "b, c"}, body=b"\x00gone", url=URL)
    decoded = codec.loads(codec.dumps(response))
    assert type(decoded) is FetchResponse
    assert decoded == response


@pytest.mark.parametrize("codec", [SAFE, TRUSTED], ids=["safe", "trusted"])
@pytest.mark.parametrize("error", [FetchError(URL, 3, 503), FetchError(URL, 1, None, "Boom: x")])
def test_a_fetch_error_round_trips_through_the_codec_with_its_attributes(
    codec: Codec, error: FetchError
) -> None:
    try:
        raise error
    except FetchError as raised:
        decoded = codec.loads(codec.dumps(raised))
    assert type(decoded) is FetchError
    assert (decoded.url, decoded.attempts, decoded.status, decoded.cause) == (
        error.url,
        error.attempts,
        error.status,
        error.cause,
    )
    assert str(decoded) == str(error)
    assert "Remote traceback" in decoded.__notes__[0]


def test_an_unregistered_fetch_error_would_decode_as_a_remote_error() -> None:
    # Why FetchError is registered: exceptions are rebuilt only from registered types.
    decoded = Codec(registry=TypeRegistry()).loads(SAFE.dumps(FetchError(URL, 1, 500)))
    assert isinstance(decoded, RemoteError)
    assert decoded.type_name == "continuation.FetchError"
    assert decoded.message == str(FetchError(URL, 1, 500))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
header_names = st.text("abcXYZ-_0123", min_size=1, max_size=8)
header_values = st.text(st.characters(blacklist_characters="\r\n\0"), max_size=12)


@given(
    method=st.sampled_from(["GET", "post", "Delete", "PATCH"]),
    headers=st.dictionaries(header_names, header_values, max_size=3),
    body=st.none() | st.binary(max_size=20) | st.text(max_size=20) | json_values,
)
def test_any_valid_fetch_request_round_trips_through_the_safe_codec(
    method: str, headers: dict[str, str], body: Any
) -> None:
    request = FetchRequest(url=URL, method=method, headers=headers, body=body)
    assert SAFE.loads(SAFE.dumps(request)) == request


@given(
    status=st.integers(100, 599),
    headers=st.dictionaries(header_names, header_values, max_size=3),
    body=st.binary(max_size=50),
)
def test_any_fetch_response_round_trips_through_the_safe_codec(
    status: int, headers: dict[str, str], body: bytes
) -> None:
    response = FetchResponse(status=status, headers=headers, body=body, url=URL)
    assert SAFE.loads(SAFE.dumps(response)) == response


# -- the dispatcher's own arguments and life ---------------------------------------------------


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"concurrency": 0}, "concurrency must be at least 1"),
        ({"max_body_bytes": -1}, "max_body_bytes must be >= 0"),
    ],
)
def test_the_dispatcher_refuses_bad_options(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidArgumentError, match=problem):
        FetchDispatcher(**options)


@pytest.mark.parametrize(
    ("key", "timeout", "problem"),
    [
        ("k", 0.0, "timeout must be a positive number"),
        ("k", -1.0, "timeout must be a positive number"),
        ("k", math.nan, "timeout must be a positive number"),
        ("", 5.0, "cannot be an Idempotency-Key"),
        ("a\r\nX-Evil: 1", 5.0, "cannot be an Idempotency-Key"),
    ],
)
async def test_fetch_refuses_bad_arguments_before_sending(
    key: str, timeout: float, problem: str
) -> None:
    server = Server(reply(200))
    async with dispatcher(server) as fetcher:
        with pytest.raises(InvalidArgumentError, match=problem):
            await fetcher.fetch(
                FetchRequest(url=URL), idempotency_key=key, timeout=timeout, retry=NO_JITTER
            )
    assert server.requests == []


async def test_the_dispatcher_closes_only_the_client_it_made() -> None:
    async with FetchDispatcher() as own:
        made = own._client
        assert made.follow_redirects
    assert made.is_closed
    given_client = httpx.AsyncClient()
    async with given_client:
        async with FetchDispatcher(client=given_client):
            pass
        assert not given_client.is_closed
