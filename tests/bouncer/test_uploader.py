"""The coalescing uploader's rules, one test each; time is a fake sleep, nothing really waits."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from continuation import InvalidArgumentError, RetryPolicy, SystemClosedError
from continuation._uploader import (
    UNSET,
    CoalescingUploader,
    Report,
    merge_patch,
    merge_reports,
)

POLICY = RetryPolicy(max_attempts=1, base_delay=1.0, max_delay=8.0, jitter=0.5)


class FakeSleep:
    """Records each delay asked for and blocks until the test releases it."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.waiting: list[asyncio.Future[None]] = []
        self.cancelled = 0

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        try:
            await future
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for future in waiting:
            future.set_result(None)


class FakeSend:
    """Records what is sent; fails while ``failures`` lasts; blocks while ``gate`` is shut."""

    def __init__(self, failures: int = 0) -> None:
        self.sent: list[Report] = []
        self.failures = failures
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.cancelled = 0

    async def __call__(self, report: Report) -> None:
        self.sent.append(report)
        self.entered.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the bouncer is down")


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def uploader(send: Any, sleep: Any = None, seed: int = 1) -> CoalescingUploader[Report]:
    return CoalescingUploader(
        send,
        merge=merge_reports,
        retry=POLICY,
        sleep=sleep or FakeSleep(),
        rng=random.Random(seed),
        name="test uploader",
    )


async def test_a_report_is_sent_once() -> None:
    send = FakeSend()
    async with uploader(send) as up:
        up.report(Report(due_at=10.0))
        assert up.busy
        assert await up.flush(1)
    assert send.sent == [Report(due_at=10.0)]
    assert up.sent == 1
    assert not up.busy


async def test_at_most_one_request_in_flight_and_one_pending() -> None:
    send = FakeSend()
    send.gate.clear()
    async with uploader(send) as up:
        up.report(Report(due_at=30.0))
        await send.entered.wait()
        for due in (20.0, 25.0, 15.0):
            up.report(Report(due_at=due))
        await settle()
        assert len(send.sent) == 1, "a second request went out while one was in flight"
        assert up.pending == Report(due_at=15.0)
        send.gate.set()
        assert await up.flush(1)
    assert [report.due_at for report in send.sent] == [30.0, 15.0]


async def test_the_due_time_last_value_wins_and_unset_keeps_it() -> None:
    assert merge_reports(Report(due_at=5.0), Report(due_at=9.0)).due_at == 9.0
    assert merge_reports(Report(due_at=5.0), Report(due_at=None)).due_at is None
    assert merge_reports(Report(due_at=5.0), Report(metadata={"a": 1})).due_at == 5.0
    assert Report().due_at is UNSET
    assert repr(UNSET) == "UNSET"
    assert not UNSET


async def test_pending_metadata_merges_per_json_merge_patch() -> None:
    send = FakeSend()
    send.gate.clear()
    async with uploader(send) as up:
        up.report(Report(due_at=1.0))
        await send.entered.wait()
        up.report(Report(metadata={"host": "a", "load": {"cpu": 1, "mem": 2}, "old": True}))
        up.report(Report(metadata={"load": {"mem": None, "io": 3}, "old": None}))
        # The pending report is the whole state: the due time in flight, the merged metadata.
        merged = {"host": "a", "load": {"cpu": 1, "io": 3}}
        assert up.pending == Report(due_at=1.0, metadata=merged)
        send.gate.set()
        await up.flush(1)


# The examples of RFC 7396, appendix A: target, patch, result.
RFC_7396_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC_7396_EXAMPLES)
def test_merge_patch_follows_rfc_7396(target: Any, patch: Any, result: Any) -> None:
    before = repr(target)
    assert merge_patch(target, patch) == result
    assert repr(target) == before, "the target was modified"


async def test_a_failure_is_retried_with_capped_exponential_backoff_and_jitter() -> None:
    send, sleep = FakeSend(failures=6), FakeSleep()
    async with uploader(send, sleep, seed=3) as up:
        up.report(Report(due_at=1.0))
        for _ in range(6):
            await settle()
            sleep.release()
        assert await up.flush(1)
    expected = random.Random(3)
    assert sleep.delays == [POLICY.delay(attempt, expected) for attempt in range(1, 7)]
    # max_attempts=1 in the policy, yet the uploader kept trying: attempts are unlimited.
    assert len(send.sent) == 7
    assert up.failures == 6
    assert all(POLICY.max_delay * 0.5 <= d <= POLICY.max_delay for d in sleep.delays[3:])
    assert sleep.delays[0] <= POLICY.base_delay


async def test_newer_reports_are_absorbed_before_each_retry() -> None:
    send, sleep = FakeSend(failures=1), FakeSleep()
    async with uploader(send, sleep) as up:
        up.report(Report(due_at=50.0, metadata={"a": 1}))
        await settle()
        assert len(sleep.waiting) == 1, "the first attempt should have failed and be waiting"
        up.report(Report(due_at=40.0, metadata={"b": 2}))
        up.report(Report(metadata={"a": None}))
        sleep.release()
        assert await up.flush(1)
    # The retry sends the newest state: a's deletion holds even though the failed request
    # that set a=1 is the one retried.
    assert send.sent[1] == Report(due_at=40.0, metadata={"b": 2})
    assert len(send.sent) == 2, "the absorbed reports must not be sent again"


async def test_it_retries_until_the_request_succeeds() -> None:
    send, sleep = FakeSend(failures=25), FakeSleep()
    async with uploader(send, sleep) as up:
        up.report(Report(due_at=1.0))
        while send.failures:
            await settle()
            sleep.release()
        assert await up.flush(1)
    assert len(send.sent) == 26
    assert max(sleep.delays) <= POLICY.max_delay


async def test_aclose_drops_the_pending_report_and_cancels_the_wait() -> None:
    send, sleep = FakeSend(failures=1), FakeSleep()
    up = uploader(send, sleep)
    up.report(Report(due_at=1.0))
    await settle()
    assert len(sleep.waiting) == 1
    up.report(Report(due_at=2.0))
    await up.aclose()
    assert sleep.cancelled == 1
    await settle()
    assert len(send.sent) == 1
    assert up.pending is None
    assert not up.busy
    assert "closed" in repr(up)
    with pytest.raises(SystemClosedError):
        up.report(Report(due_at=3.0))
    await up.aclose()  # idempotent


async def test_aclose_cancels_the_request_in_flight() -> None:
    send = FakeSend()
    send.gate.clear()
    up = uploader(send)
    up.report(Report(due_at=1.0))
    await send.entered.wait()
    up.report(Report(due_at=2.0))
    await up.aclose()
    assert send.cancelled == 1
    assert len(send.sent) == 1


async def test_flush_gives_up_after_its_timeout() -> None:
    send = FakeSend()
    send.gate.clear()
    async with uploader(send) as up:
        up.report(Report(due_at=1.0))
        assert not await up.flush(0.01)
        assert "busy" in repr(up)
        send.gate.set()
        assert await up.flush(1)
        assert "idle" in repr(up)


async def test_a_report_after_the_worker_finished_starts_it_again() -> None:
    send = FakeSend()
    async with uploader(send) as up:
        up.report(Report(due_at=1.0))
        await up.flush(1)
        up.report(Report(due_at=2.0))
        await up.flush(1)
    assert [report.due_at for report in send.sent] == [1.0, 2.0]


def test_options_are_checked() -> None:
    async def send(report: Report) -> None:
        pass

    with pytest.raises(TypeError, match="RetryPolicy"):
        CoalescingUploader(send, merge=merge_reports, retry=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="callables"):
        CoalescingUploader(send, merge=None)  # type: ignore[arg-type]
