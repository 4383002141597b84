"""The proxy-fetch executor: HTTP requests made off-turn, retried, bounded and storable.

A ``FetchRequest`` is what an actor records in its turn; the ``FetchDispatcher`` performs it
after the turn commits, with an ``Idempotency-Key`` header so that a request repeated after a
crash can be recognised by the server, and turns the outcome into a ``FetchResponse`` (any
final HTTP response, 4xx included) or a ``FetchError`` (retries used up, deadline reached,
body too large). All three are registered with the codec, so they can be stored in the
outbox and injected at ``c.result`` or ``c.error``.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Self

import httpx
from pydantic import BaseModel, ConfigDict, JsonValue, field_validator, model_validator

from operation_chain import register_type

from ._errors import ContinuationError, InvalidArgumentError
from ._options import RetryPolicy

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An HTTP token (RFC 9110, section 5.6.2): what methods and header names are made of."""

_DROPPED_FROM_HTTPX = frozenset({"host", "content-length", "transfer-encoding", "connection"})
"""Headers ``from_httpx`` leaves out: httpx derives them from the URL and the body again."""

_RETRYABLE = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
"""Failures worth another attempt; other httpx errors (too many redirects, a body that does
not decode) would fail the same way again."""


@register_type(name="continuation.FetchRequest")
class FetchRequest(BaseModel):
    """An HTTP request for ``strategy="proxy-fetch"``, validated when built so that a bad one
    fails in the scheduling turn, not after it was stored.

    Attributes:
        url: an absolute ``http://`` or ``https://`` URL.
        method: an HTTP method; stored uppercased.
        headers: request headers. ``Idempotency-Key`` is set by the dispatcher and replaces
            any given here.
        body: ``None``; ``bytes`` sent as they are; ``str`` sent as UTF-8 (``text/plain;
            charset=utf-8`` unless a content type is given); any other JSON value (dict,
            list, number, bool) sent as JSON (``application/json`` unless given). A JSON
            string cannot be told from text: pass ``json.dumps(s)`` with a content type.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    url: str
    method: str = "GET"
    headers: dict[str, str] = {}
    body: bytes | str | JsonValue | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a valid URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"needs an absolute http or https URL, not {value!r}")
        return value

    @field_validator("method")
    @classmethod
    def _method_token(cls, value: str) -> str:
        if not _TOKEN.fullmatch(value):
            raise ValueError(f"{value!r} is not an HTTP method")
        return value.upper()

    @field_validator("headers")
    @classmethod
    def _header_fields(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"the value of header {name!r} holds a line break or NUL")
        return value

    @model_validator(mode="after")
    def _json_encodable(self) -> Self:
        # NaN and infinities are not JSON; refuse them now rather than at send time.
        if not isinstance(self.body, bytes | str | None):
            try:
                json.dumps(self.body, allow_nan=False)
            except ValueError as exc:
                raise ValueError(f"the JSON body cannot be encoded: {exc}") from None
        return self

    @classmethod
    def from_httpx(cls, request: httpx.Request) -> FetchRequest:
        """A ``FetchRequest`` carrying the method, URL, headers and body of ``request``.

        Repeated headers are joined with ``", "``. ``Host``, ``Content-Length``,
        ``Transfer-Encoding`` and ``Connection`` are left out; they are derived again when the
        request is sent.

        Raises:
            InvalidArgumentError: the request has a streaming body that cannot be read
                synchronously (build it with ``content=bytes``, ``json=`` or ``data=``).
            pydantic.ValidationError: the URL or a header does not validate.
        """
        if not isinstance(request.stream, Iterable):
            raise InvalidArgumentError(
                "an httpx.Request with an async streaming body cannot be stored; build it"
                " with content=bytes, json= or data="
            )
        content = request.read()
        headers: dict[str, str] = {}
        for name, value in request.headers.multi_items():
            if name not in _DROPPED_FROM_HTTPX:
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return cls(
            url=str(request.url), method=request.method, headers=headers, body=content or None
        )

    def content(self) -> tuple[bytes | None, str | None]:
        """The body as bytes, and the content type it implies (``None`` for raw bytes)."""
        if self.body is None or isinstance(self.body, bytes):
            return self.body, None
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        encoded = json.dumps(self.body, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        return encoded.encode(), "application/json"


@register_type(name="continuation.FetchResponse")
@dataclass(frozen=True, slots=True, repr=False)
class FetchResponse:
    """The final HTTP response of a proxy-fetch, whatever its status (4xx included).

    Attributes:
        status: the HTTP status code.
        headers: header names lowercased; a header sent several times has its values joined
            with ``", "`` (RFC 9110, section 5.3), so read ``set-cookie`` with care.
        body: the whole body, decompressed; at most the dispatcher's ``max_body_bytes``.
        url: the URL that answered, after any redirects.
    """

    status: int
    headers: dict[str, str]
    body: bytes
    url: str

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        """The body decoded by the charset of ``content-type`` (UTF-8 when none or unknown);
        undecodable bytes become U+FFFD."""
        return self.body.decode(_charset(self.headers.get("content-type")), errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON. Raises ``ValueError`` when it is not JSON."""
        return json.loads(self.body)

    def __repr__(self) -> str:
        # The body may be megabytes: a log line shows its size only.
        return (
            f"FetchResponse(status={self.status}, url={self.url!r}, body=<{len(self.body)} bytes>)"
        )


@register_type(name="continuation.FetchError")
class FetchError(ContinuationError):
    """A proxy-fetch that produced no final response.

    Raised (and injected at ``c.error``) when every attempt failed with a connection error, a
    timeout, 429 or 5xx; when the overall deadline ran out; when the body was larger than the
    limit; or when httpx refused the exchange (too many redirects, an undecodable body).

    The arguments are the attributes, in order, so the codec rebuilds the error from them.

    Attributes:
        url: the requested URL.
        attempts: how many attempts were made.
        status: the status of the last response if the last attempt got one (a retryable
            status, or 2xx/4xx with a body over the limit); ``None`` if it got none.
        cause: why it stopped, when not simply on ``status``: ``"TypeName: message"`` of the
            last network error, the deadline, or the size limit. ``None`` when the retries
            ran out on a retryable status.
    """

    def __init__(
        self, url: str, attempts: int, status: int | None = None, cause: str | None = None
    ) -> None:
        super().__init__(url, attempts, status, cause)
        self.url = url
        self.attempts = attempts
        self.status = status
        self.cause = cause

    def __str__(self) -> str:
        detail = self.cause or f"HTTP {self.status}"
        if self.cause and self.status is not None:
            detail = f"{detail} (last status {self.status})"
        tries = "attempt" if self.attempts == 1 else "attempts"
        return f"fetch of {self.url} failed after {self.attempts} {tries}: {detail}"


@dataclass(frozen=True, slots=True)
class _Retryable:
    """An attempt that failed in a way another attempt may fix."""

    status: int | None
    cause: str | None
    retry_after: float | None = None


class FetchDispatcher:
    """Performs ``FetchRequest``\\ s with bounded concurrency, retries and a size limit.

    One dispatcher serves a whole system: one shared ``httpx.AsyncClient`` (connection
    pooling) and a semaphore of ``concurrency`` attempts in flight (a slot is not held while
    waiting to retry). Use it as ``async with`` or call ``aclose()``.

    Args:
        client: the client to send with; the dispatcher then leaves closing it to the
            caller. By default it makes one that follows redirects, with a pool as large
            as ``concurrency``.
        concurrency: attempts in flight at once.
        max_body_bytes: the largest body accepted; a larger one is a ``FetchError``, and is
            never read past the limit.
        sleep: waits between attempts (inject a recorder in tests).
        rng: the randomness of the backoff jitter.
        clock: monotonic seconds, for the overall deadline.
    """

    def __init__(
        self,
        *,
        client: httpx.AsyncClient | None = None,
        concurrency: int = 64,
        max_body_bytes: int = 10 * 2**20,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 1:
            raise InvalidArgumentError(f"concurrency must be at least 1, not {concurrency}")
        if max_body_bytes < 0:
            raise InvalidArgumentError(f"max_body_bytes must be >= 0, not {max_body_bytes}")
        self._owns_client = client is None
        if client is None:
            limits = httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            )
            client = httpx.AsyncClient(follow_redirects=True, limits=limits, timeout=None)
        self._client = client
        self._slots = asyncio.Semaphore(concurrency)
        self._max_body = max_body_bytes
        self._sleep = sleep
        self._rng = rng
        self._clock = clock

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client if the dispatcher made it."""
        if self._owns_client:
            await self._client.aclose()

    async def fetch(
        self,
        request: FetchRequest,
        *,
        idempotency_key: str,
        timeout: float | None,
        retry: RetryPolicy,
    ) -> FetchResponse:
        """Perform ``request`` until a final response, retrying what may succeed next time.

        Connection errors, timeouts, 429 and 5xx are retried after ``retry.delay(attempt)``,
        or after ``Retry-After`` on 429 and 503 (both capped by ``retry.max_delay``), up to
        ``retry.max_attempts`` attempts. Cancelling the awaiting task aborts the request.

        Args:
            request: what to send.
            idempotency_key: the ``Idempotency-Key`` header of every attempt.
            timeout: seconds for the whole fetch, retries and waits included; each attempt
                gets what remains. ``None`` (or ``math.inf``) sets no deadline at all: an
                attempt then waits on an unresponsive server until the task is cancelled.
            retry: how many attempts, and the backoff between them.

        Raises:
            FetchError: no final response (see its attributes for why).
            InvalidArgumentError: ``timeout`` is not a positive number or ``None``, or the key
                is not a valid header value.
        """
        if timeout is None:
            timeout = math.inf
        if not timeout > 0:
            raise InvalidArgumentError(f"timeout must be a positive number, not {timeout!r}")
        if not idempotency_key or any(c in idempotency_key for c in "\r\n\0"):
            raise InvalidArgumentError(f"{idempotency_key!r} cannot be an Idempotency-Key")
        content, content_type = request.content()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "idempotency-key"}
        if content_type and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = content_type
        headers["Idempotency-Key"] = idempotency_key
        deadline = self._clock() + timeout
        attempt = 1
        while True:
            outcome = await self._attempt(request, headers, content, deadline, attempt)
            if isinstance(outcome, FetchResponse):
                return outcome
            if attempt >= retry.max_attempts:
                raise FetchError(request.url, attempt, outcome.status, outcome.cause)
            wait = outcome.retry_after
            wait = min(retry.delay(attempt, self._rng) if wait is None else wait, retry.max_delay)
            if self._clock() + wait >= deadline:
                cause = f"TimeoutError: the {timeout:g} s deadline leaves no time for a retry"
                if outcome.cause:
                    cause = f"{cause}; last error {outcome.cause}"
                raise FetchError(request.url, attempt, outcome.status, cause)
            await self._sleep(wait)
            attempt += 1

    async def _attempt(
        self,
        request: FetchRequest,
        headers: dict[str, str],
        content: bytes | None,
        deadline: float,
        attempt: int,
    ) -> FetchResponse | _Retryable:
        """One attempt within what remains of the deadline; final failures raise."""
        cause = "TimeoutError: no response before the deadline"
        left = deadline - self._clock()
        if left <= 0:  # a sleep overshot the deadline; this attempt is not made
            raise FetchError(request.url, attempt - 1, cause=cause)
        remaining = None if left == math.inf else left
        try:
            # httpx's timeouts bound each phase (connect, each read); this bounds the whole
            # attempt, the wait for a slot and a slowly dripping body included.
            async with asyncio.timeout(remaining), self._slots:
                return await self._send(request, headers, content, remaining, attempt)
        except TimeoutError:
            raise FetchError(request.url, attempt, cause=cause) from None
        except _RETRYABLE as exc:
            return _Retryable(None, _describe(exc))
        except httpx.HTTPError as exc:
            raise FetchError(request.url, attempt, cause=_describe(exc)) from exc

    async def _send(
        self,
        request: FetchRequest,
        headers: dict[str, str],
        content: bytes | None,
        remaining: float | None,
        attempt: int,
    ) -> FetchResponse | _Retryable:
        async with self._client.stream(
            request.method, request.url, headers=headers, content=content, timeout=remaining
        ) as response:
            status = response.status_code
            if status == 429 or 500 <= status <= 599:
                wait = None
                if status in (429, 503):
                    wait = parse_retry_after(response.headers.get("retry-after"), time.time())
                return _Retryable(status, None, wait)
            body = await self._read_body(response, request.url, attempt)
            headers_out: dict[str, str] = {}
            for name, value in response.headers.multi_items():
                headers_out[name] = (
                    f"{headers_out[name]}, {value}" if name in headers_out else value
                )
            return FetchResponse(status, headers_out, body, str(response.url))

    async def _read_body(self, response: httpx.Response, url: str, attempt: int) -> bytes:
        """The body, refused as soon as it is known to exceed the limit: by ``Content-Length``
        before reading anything, else while streaming (the limit applies after decompression,
        so a small compressed body cannot inflate past it)."""
        limit = self._max_body
        declared = response.headers.get("content-length", "")
        size = int(declared) if declared.isascii() and declared.isdigit() else 0
        chunks: list[bytes] = []
        if size <= limit:
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    break
                chunks.append(chunk)
        if size > limit:
            cause = f"the body is larger than the {limit} byte limit"
            raise FetchError(url, attempt, response.status_code, cause)
        return b"".join(chunks)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait by a ``Retry-After`` value (delta-seconds or an HTTP-date, read
    against ``now`` in epoch seconds); ``None`` when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except ValueError:
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; HTTP-dates are always UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _charset(content_type: str | None) -> str:
    for parameter in (content_type or "").split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            try:
                return codecs.lookup(value.strip().strip("\"'")).name
            except LookupError:
                break
    return "utf-8"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
