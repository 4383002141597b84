"""A coalescing uploader: reports go out one at a time, newer ones merged into the pending one.

The rules, in the spirit of a well-behaved telemetry client:

- at most one request in flight and at most one report pending behind it;
- a new report merges into the pending one (``merge(pending, new)``); for ``Report``, the due
  time's last value wins and ``metadata`` merges as an RFC 7396 JSON Merge Patch;
- what is sent is always the whole current state: a report merges into the latest state
  (pending, else in flight, else last sent), so a request can be retried or superseded
  without losing anything, and a ``null`` that deleted a key stays deleted;
- a failed request is retried with capped exponential backoff plus jitter
  (``RetryPolicy.delay``; its ``max_attempts`` is ignored: attempts are unlimited), and newer
  reports are absorbed into the one being retried before each retry (the pending state,
  built on the retried one, replaces it);
- it retries until the request succeeds or the uploader is closed; ``aclose()`` drops whatever
  is pending and cancels the request or the wait in progress.

Time is injected (``sleep``, a seeded ``random.Random``) so tests never really wait.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from ._errors import InvalidArgumentError, SystemClosedError
from ._options import RetryPolicy

logger = logging.getLogger("continuation.uploader")

R = TypeVar("R")

Sleep = Callable[[float], Awaitable[object]]


class _Unset:
    """The type of ``UNSET``: "not given", which differs from ``None`` ("nothing")."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = _Unset()

DEFAULT_RETRY: Final = RetryPolicy(base_delay=1.0, max_delay=60.0, jitter=0.5)


@dataclass(frozen=True, slots=True)
class Report:
    """One report: an earliest due time and metadata.

    Attributes:
        due_at: epoch seconds, ``None`` for "nothing is due", or ``UNSET`` to leave the
            pending report's value as it is.
        metadata: a JSON Merge Patch (RFC 7396) applied to the pending report's metadata:
            a key set to ``None`` is deleted, nested objects merge, anything else replaces.
    """

    due_at: float | _Unset | None = UNSET
    metadata: Mapping[str, Any] = field(default_factory=dict)


def merge_reports(pending: Report, new: Report) -> Report:
    """``new`` merged into ``pending``: its due time wins when given, its metadata patches."""
    due_at = pending.due_at if isinstance(new.due_at, _Unset) else new.due_at
    metadata = merge_patch(dict(pending.metadata), dict(new.metadata))
    return Report(due_at=due_at, metadata=metadata)


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target`` as RFC 7396 says; neither argument is modified."""
    if not isinstance(patch, Mapping):
        return patch
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


class CoalescingUploader(Generic[R]):
    """Sends reports with ``send``, one request at a time, coalescing what arrives meanwhile.

    Each report is merged into the latest state (``merge(latest, report)``), and that state is
    what gets sent: a retried or superseded request loses nothing. ``report()`` is synchronous
    and never blocks, so it can be called from a callback; the worker task starts on the
    running event loop at the first report.

    Args:
        send: sends one report; raising any ``Exception`` is a failure to retry.
        merge: merges a newer report into the latest state (``merge(latest, newer)``).
        retry: the backoff between attempts; ``max_attempts`` is not used.
        sleep: waits that many seconds (``asyncio.sleep`` by default); tests pass a fake.
        rng: the randomness of the jitter; pass a seeded ``random.Random`` for repeatable
            delays.
        name: names the uploader in log messages.
    """

    def __init__(
        self,
        send: Callable[[R], Awaitable[object]],
        *,
        merge: Callable[[R, R], R],
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        name: str = "uploader",
    ) -> None:
        if not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        if not callable(send) or not callable(merge) or not callable(sleep):
            raise InvalidArgumentError("send, merge and sleep must be callables")
        self._send = send
        self._merge = merge
        self._retry = retry
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._name = name
        self._pending: R | None = None
        self._has_pending = False
        self._latest: R | None = None
        self._has_latest = False
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self.sent = 0
        self.failures = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "busy" if self.busy else "idle"
        return f"<CoalescingUploader {self._name} {state}>"

    @property
    def busy(self) -> bool:
        """Whether a report is in flight, being retried, or pending."""
        return not self._idle.is_set()

    @property
    def pending(self) -> R | None:
        """The report waiting behind the one in flight (or being retried), if any."""
        return self._pending if self._has_pending else None

    def report(self, report: R) -> None:
        """Queue ``report``: merged into the pending one, sent when the one in flight is done.

        Raises:
            SystemClosedError: the uploader is closed.
        """
        if self._closed:
            raise SystemClosedError(f"the {self._name} is closed")
        if self._has_latest:
            # The pending report when there is one, else the one in flight or last sent.
            report = self._merge(self._latest, report)  # type: ignore[arg-type]
        self._latest, self._has_latest = report, True
        self._pending, self._has_pending = report, True
        self._idle.clear()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._work(), name=f"continuation-{self._name}"
            )

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until nothing is in flight or pending; ``False`` if ``timeout`` ran out first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Drop the pending report, cancel the request or wait in progress; idempotent."""
        self._closed = True
        self._pending, self._has_pending = None, False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._idle.set()

    async def __aenter__(self) -> CoalescingUploader[R]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _take(self) -> R:
        report = self._pending
        self._pending, self._has_pending = None, False
        return report  # type: ignore[return-value]

    async def _work(self) -> None:
        try:
            while self._has_pending:
                await self._upload(self._take())
        finally:
            self._task = None
            self._idle.set()

    async def _upload(self, report: R) -> None:
        attempt = 0
        while True:
            try:
                await self._send(report)
            except Exception as exc:
                attempt += 1
                self.failures += 1
                delay = self._retry.delay(attempt, self._rng)
                logger.warning(
                    "the %s failed (attempt %d), retrying in %.1f s: %s",
                    self._name,
                    attempt,
                    delay,
                    exc,
                )
                await self._sleep(delay)
                if self._has_pending:
                    report = self._take()  # built on this one, so it supersedes it
                continue
            self.sent += 1
            return
