"""``BouncerTimer``: an ``ActorSystem`` that keeps no timer of its own, woken by the bouncer.

The protocol, host side:

1. The system tells the timer every due time its scheduler hears of. The timer turns it into
   a wake-up time: never sooner than ``min_delay`` from now (the bouncer refuses shorter
   waits, so an earlier due time runs ``min_delay`` late) and never later than ``max_delay``
   (a longer wait is a chain of wake-ups that find nothing due and register the next).
2. Only a wake-up *earlier* than the one already asked for is reported. Reports go through
   a ``CoalescingUploader``: one ``POST /waits`` in flight, one pending, the last (that is,
   the earliest) wake-up time wins, failures retried with backoff until they succeed.
3. A wait is registered with ``delay`` (so the two clocks need not agree to the second) and
   an idempotency ``key`` naming the wake-up time, so a retried registration whose answer
   was lost does not register it twice. When an earlier wait replaces a later one, the later
   one is cancelled (``DELETE``, best effort: a stray wake-up runs nothing and costs nothing).
4. The bouncer's signed callback reaches the wake endpoint (``create_wake_route``), which
   verifies it, runs everything due (``drain``) while the bouncer holds the connection,
   reports the next due time, waits (bounded) for that report to be sent, and answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import httpx
import orjson

from .._errors import InvalidArgumentError, SystemClosedError
from .._options import RetryPolicy
from .._uploader import DEFAULT_RETRY, CoalescingUploader, Report, Sleep, merge_reports
from ._errors import (
    BouncerRequestError,
    BouncerUnavailableError,
    StaleSignatureError,
)
from ._models import checked_number
from ._signing import signing_key_bytes, verify_signature

if TYPE_CHECKING:
    from .._system import ActorSystem

logger = logging.getLogger("continuation.bouncer")

WAKE_PATH: Final = "/bouncer/wake"


@dataclass(frozen=True, slots=True)
class _Registered:
    wake_at: float
    wait_id: str


class BouncerTimer:
    """Wakes an ``ActorSystem`` through a bouncer service instead of an in-process timer.

    ``ActorSystem(..., timer=BouncerTimer(...))`` starts no scheduler loop: the system reports
    its earliest due time to the bouncer, and the bouncer's signed callback to
    ``callback_url`` (served by ``create_wake_route``, or by ``python -m continuation serve``
    at ``/bouncer/wake``) runs what is due.

    Args:
        url: the bouncer's base URL, e.g. ``"https://bouncer.internal:8100"``.
        token: a bearer token the bouncer accepts.
        callback_url: where the bouncer calls back: this host's wake endpoint.
        signing_key: the key the bouncer signs callbacks with (shared secret).
        min_delay: the bouncer's ``--min-delay``: due times sooner than this run this late.
        max_delay: the bouncer's ``--max-delay``: longer waits are chained.
        key_prefix: prefixes the idempotency keys of this host's waits; by default derived
            from ``callback_url``, so hosts sharing a callback share their wake-ups.
        retry: backoff between failed reports (attempts are unlimited).
        request_timeout: seconds one request to the bouncer may take.
        window: seconds a callback's signature stays acceptable (replay window).
        flush_timeout: how long a wake-up, and closing, wait for the report to be sent.
        transport: the httpx transport to the bouncer (tests pass an ``ASGITransport``).
        sleep: how the uploader waits between retries (tests pass a fake).
        rng: randomness of the retry jitter.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str,
        callback_url: str,
        signing_key: bytes | str,
        min_delay: float = 60.0,
        max_delay: float = 7200.0,
        key_prefix: str | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        request_timeout: float = 30.0,
        window: float = 300.0,
        flush_timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._url = _http_url("url", url).rstrip("/")
        self._callback_url = _http_url("callback_url", callback_url)
        if not isinstance(token, str) or not token:
            raise InvalidArgumentError("token must be a non-empty str")
        self._token = token
        self.signing_key = signing_key_bytes(signing_key)
        self._min_delay = checked_number("min_delay", min_delay, allow_zero=True)
        self._max_delay = checked_number("max_delay", max_delay)
        if self._min_delay > self._max_delay:
            raise InvalidArgumentError("min_delay must not be greater than max_delay")
        digest = hashlib.sha256(self._callback_url.encode()).hexdigest()[:16]
        self._key_prefix = key_prefix if key_prefix is not None else f"ocan-{digest}"
        if not isinstance(self._key_prefix, str) or not 0 < len(self._key_prefix) <= 150:
            raise InvalidArgumentError("key_prefix must be a str of 1 to 150 characters")
        if not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        self._retry = retry
        self._request_timeout = checked_number("request_timeout", request_timeout)
        self.window = checked_number("window", window)
        self._flush_timeout = checked_number("flush_timeout", flush_timeout, allow_zero=True)
        self._transport = transport
        self._sleep = sleep
        self._rng = rng
        self._system: ActorSystem | None = None
        self._client: httpx.AsyncClient | None = None
        self._uploader: CoalescingUploader[Report] | None = None
        self._wake_at: float | None = None
        self._registered: _Registered | None = None
        self._seen: dict[str, int] = {}
        self._waking = asyncio.Lock()
        self._closed = False
        self.wakes = 0

    def __repr__(self) -> str:
        return f"BouncerTimer({self._url!r}, callback_url={self._callback_url!r})"

    @property
    def callback_url(self) -> str:
        """Where the bouncer calls this host back."""
        return self._callback_url

    @property
    def wake_at(self) -> float | None:
        """The earliest wake-up asked of the bouncer (sent or still pending), if any."""
        return self._wake_at

    @property
    def uploader(self) -> CoalescingUploader[Report]:
        """The coalescing uploader of the reports (started with the system)."""
        if self._uploader is None:
            raise SystemClosedError("the BouncerTimer has not started; start its ActorSystem")
        return self._uploader

    # -- the Timer protocol ----------------------------------------------------------------

    async def start(self, system: ActorSystem) -> None:
        """Attach to ``system`` and report its earliest due time."""
        if self._system is not None or self._closed:
            raise InvalidArgumentError("a BouncerTimer serves one ActorSystem, once")
        self._system = system
        self._client = httpx.AsyncClient(
            base_url=self._url,
            headers={"authorization": f"Bearer {self._token}"},
            timeout=self._request_timeout,
            transport=self._transport,
        )
        self._uploader = CoalescingUploader(
            self._send,
            merge=merge_reports,
            retry=self._retry,
            sleep=self._sleep,
            rng=self._rng,
            name="bouncer report",
        )
        due = await system._store.next_due()
        if due is not None:
            self.notice(due)

    async def aclose(self) -> None:
        """Send the pending report if that takes under ``flush_timeout``, then stop."""
        if self._closed:
            return
        self._closed = True
        if self._uploader is not None:
            await self._uploader.flush(self._flush_timeout)
            await self._uploader.aclose()
        if self._client is not None:
            await self._client.aclose()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until the latest wake-up is registered with the bouncer; ``False`` if
        ``timeout`` ran out first.

        A host that may be frozen as soon as it answers (a serverless function) calls this
        before answering a request that scheduled something, so the report is not left
        waiting in a frozen process.
        """
        if self._uploader is None:
            return True
        return await self._uploader.flush(timeout)

    # -- due times -------------------------------------------------------------------------

    def notice(self, due: float) -> None:
        """Something is due at ``due``: ask the bouncer for a wake-up if that is sooner than
        the one already asked for."""
        if self._system is None or self._closed or self._uploader is None:
            return
        now = self._system._clock.now()
        wake_at = min(max(due, now + self._min_delay), now + self._max_delay)
        if self._wake_at is None or wake_at < self._wake_at:
            self._wake_at = wake_at
            self._uploader.report(Report(due_at=wake_at))

    async def wake(self) -> float | None:
        """Run everything due, report the next due time, and return it.

        The wake endpoint calls this once the callback is verified; wake-ups run one at a
        time.
        """
        system = self._system
        if system is None or self._closed:
            raise SystemClosedError("the BouncerTimer is not running")
        async with self._waking:
            self.wakes += 1
            # Forget the wake-up being served first: what the drain schedules, and the next
            # due time read after it, are then reported afresh.
            self._wake_at = None
            await system.drain()
            system._housekeeping()
            due = await system._store.next_due()
            if due is not None:
                self.notice(due)
            if not await self.uploader.flush(self._flush_timeout):
                logger.warning("the next wake-up is not registered yet; still trying")
            return due

    def check_signature(self, timestamp: str | None, body: bytes, signature: str | None) -> int:
        """Verify a callback (signature, window, not seen before); return its timestamp.

        Raises:
            SignatureError: forged or altered.
            StaleSignatureError: outside the window, or a replay of one already accepted.
        """
        now = self._system._clock.now() if self._system is not None else None
        signed_at = verify_signature(
            self.signing_key, timestamp, body, signature, now=now, window=self.window
        )
        assert signature is not None
        horizon = (now if now is not None else signed_at) - self.window
        for seen, at in list(self._seen.items()):
            if at < horizon:
                del self._seen[seen]
        if signature in self._seen:
            raise StaleSignatureError("this callback was already accepted once (a replay)")
        self._seen[signature] = signed_at
        return signed_at

    # -- requests to the bouncer -----------------------------------------------------------

    async def _send(self, report: Report) -> None:
        wake_at = report.due_at
        if not isinstance(wake_at, float):
            return
        assert self._system is not None
        now = self._system._clock.now()
        delay = min(self._max_delay, max(self._min_delay, wake_at - now))
        body = {
            "delay": delay,
            "callback": self._callback_url,
            "payload": {"wake_at": wake_at},
            "key": f"{self._key_prefix}:{wake_at:.3f}",
        }
        answer = await self._request("POST", "/waits", body)
        previous, wait_id = self._registered, str(answer["id"])
        self._registered = _Registered(wake_at, wait_id)
        if previous is not None and previous.wake_at > wake_at and previous.wait_id != wait_id:
            await self._cancel_quietly(previous.wait_id)

    async def _cancel_quietly(self, wait_id: str) -> None:
        try:
            await self._request("DELETE", f"/waits/{wait_id}", None)
        except (BouncerRequestError, BouncerUnavailableError) as exc:
            logger.info("could not cancel the superseded wait %s: %s", wait_id, exc)

    async def _request(self, method: str, path: str, body: Any) -> dict[str, Any]:
        assert self._client is not None
        content = None if body is None else orjson.dumps(body)
        headers = {} if body is None else {"content-type": "application/json"}
        try:
            response = await self._client.request(method, path, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise BouncerUnavailableError(
                f"cannot reach the bouncer at {self._url}: {exc}"
            ) from exc
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            answer = {}
        if not response.is_success:
            message = answer.get("message") or response.text[:200] or response.reason_phrase
            raise BouncerRequestError(
                f"the bouncer refused {method} {path} with {response.status_code}: {message}",
                status=response.status_code,
                code=answer.get("code"),
            )
        return answer


def _http_url(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgumentError(f"{name} must be an http or https URL, not {value!r}")
    return value
