"""``BouncerTimer``: an ActorSystem without a timer loop of its own, woken by the bouncer.

In process: the bouncer and the host share a manual clock, the host reaches the bouncer and
the bouncer calls the host back through ASGI transports, so every step is deterministic.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from continuation import (
    Actor,
    ActorSystem,
    AlarmInfo,
    BouncerTimer,
    Continuation,
    InvalidArgumentError,
    ManualClock,
    RetryPolicy,
    SystemClosedError,
)
from continuation.bouncer import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WAKE_PATH,
    Bouncer,
    create_bouncer_app,
    create_wake_route,
    sign,
)
from continuation.bouncer._wake import with_wake_endpoint

from .conftest import KEY, START, TOKEN

HOST = "http://host"
CALLBACK = HOST + WAKE_PATH
FAST = RetryPolicy(base_delay=0.0, max_delay=0.0, jitter=0.0)


class Note(Actor):
    """send, wait, delete: the text is gone only once the continuation has run."""

    def send(self, text: str, delay: float) -> str:
        self.storage.put("text", text)
        c = Continuation(self)
        return self.continue_(c.delete(c.result), strategy="alarm", delay=delay)

    def delete(self, fired: AlarmInfo) -> None:
        self.storage.delete("text")
        self.storage.put("deleted_at", fired.fired_at.timestamp())

    def text(self) -> Any:
        return self.storage.get("text")


class _Late:
    """An ASGI app set once the host system exists (the bouncer is made first)."""

    app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@dataclass
class Pair:
    clock: ManualClock
    bouncer: Bouncer
    system: ActorSystem
    timer: BouncerTimer
    host: httpx.AsyncClient

    async def waits(self) -> list[tuple[str, float, str]]:
        rows = await self.bouncer.store._read(
            "SELECT status, due_at, key FROM waits ORDER BY due_at"
        )
        return [(str(status), float(due), str(key)) for status, due, key in rows]

    async def flush(self) -> None:
        assert await self.timer.flush(5)

    async def advance(self, seconds: float) -> None:
        self.clock.set(self.clock.now() + seconds)
        await self.bouncer.drain()

    async def wake(self, body: bytes = b"{}", **headers: str) -> httpx.Response:
        stamp = str(int(self.clock.now()))
        signed = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(KEY, stamp, body)}
        return await self.host.post(WAKE_PATH, content=body, headers={**signed, **headers})


def make_timer(bouncer_app: Any, **options: Any) -> BouncerTimer:
    options.setdefault("retry", FAST)
    return BouncerTimer(
        "http://bouncer",
        token=TOKEN,
        callback_url=CALLBACK,
        signing_key=KEY,
        min_delay=60,
        transport=httpx.ASGITransport(app=bouncer_app),
        rng=random.Random(1),
        **options,
    )


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    clock = ManualClock(start=START)
    late = _Late()
    bouncer_app = create_bouncer_app(
        tmp_path / "waits.db",
        tokens=[TOKEN],
        signing_key=KEY,
        clock=clock,
        transport=httpx.ASGITransport(app=late),
    )
    timer = make_timer(bouncer_app)
    system = ActorSystem(tmp_path / "host.db", actors=[Note], clock=clock, timer=timer)
    async with bouncer_app.state.bouncer as bouncer, system:
        late.app = with_wake_endpoint(Starlette(), system)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=late), base_url=HOST
        ) as host:
            yield Pair(clock, bouncer, system, timer, host)


async def test_send_wait_delete_completes_only_after_the_bouncer_calls_back(pair: Pair) -> None:
    note = pair.system.get(Note, "n1")
    cid = await note.send("hello", 120)
    await pair.flush()
    key = f"{pair.timer._key_prefix}:{START + 120:.3f}"
    assert await pair.waits() == [("pending", START + 120, key)]
    await pair.system.drain()  # the host alone runs nothing: it is not due
    await pair.advance(119)
    assert await note.text() == "hello"
    await pair.advance(1)
    assert await note.text() is None
    assert (await pair.system.continuation(cid)).status == "completed"
    assert [status for status, _, _ in await pair.waits()] == ["delivered"]
    assert pair.timer.wakes == 1


async def test_a_due_time_sooner_than_min_delay_runs_min_delay_late(pair: Pair) -> None:
    note = pair.system.get(Note, "n1")
    await note.send("soon", 5)
    await pair.flush()
    assert [due for _, due, _ in await pair.waits()] == [START + 60]
    await pair.advance(59)
    assert await note.text() == "soon"
    await pair.advance(1)
    assert await note.text() is None


async def test_only_an_earlier_wake_up_is_reported_and_it_cancels_the_later_one(
    pair: Pair,
) -> None:
    await pair.system.get(Note, "a").send("far", 3000)
    await pair.flush()
    await pair.system.get(Note, "b").send("later still", 5000)
    await pair.system.get(Note, "c").send("near", 600)
    await pair.flush()
    waits = await pair.waits()
    assert [(status, due) for status, due, _ in waits] == [
        ("pending", START + 600),
        ("cancelled", START + 3000),
    ]
    assert pair.timer.uploader.sent == 2


async def test_a_burst_costs_one_request_in_flight_and_one_pending(pair: Pair) -> None:
    sends = [pair.system.get(Note, f"n{i}").send("x", 7000 - i * 100) for i in range(50)]
    await asyncio.gather(*sends)
    await pair.flush()
    # 50 due times, each earlier than the last, reach the bouncer as a few requests (one per
    # group commit at most); the superseded waits are cancelled.
    assert pair.timer.uploader.sent <= 5
    assert {status for status, due, _ in await pair.waits() if due > START + 2100} <= {"cancelled"}
    assert [due for status, due, _ in await pair.waits() if status == "pending"] == [START + 2100]


async def test_a_wait_beyond_max_delay_is_a_chain_of_wake_ups(pair: Pair) -> None:
    note = pair.system.get(Note, "n1")
    await note.send("tomorrow", 20_000)
    await pair.flush()
    assert [due for _, due, _ in await pair.waits()] == [START + 7200]
    await pair.advance(7200)  # wakes, finds nothing due, registers the next hop
    await pair.flush()
    await pair.advance(7200)
    await pair.flush()
    assert await note.text() == "tomorrow"
    await pair.advance(20_000 - 14_400)
    assert await note.text() is None
    assert [due - START for _, due, _ in await pair.waits()] == [7200, 14_400, 20_000]


async def test_the_wake_endpoint_runs_what_is_due_and_reports_the_next(pair: Pair) -> None:
    first = pair.system.get(Note, "first")
    second = pair.system.get(Note, "second")
    await first.send("1", 100)
    await second.send("2", 900)
    pair.clock.set(START + 100)
    response = await pair.wake()
    assert response.status_code == 200
    assert response.json() == {"woke": True, "next_due": START + 900}
    assert await first.text() is None
    assert await second.text() == "2"
    assert pair.timer.wake_at == START + 900


@pytest.mark.parametrize(
    "headers",
    [
        {SIGNATURE_HEADER: "sha256=" + "0" * 64},
        {SIGNATURE_HEADER: sign(b"another-key-0123456789", str(int(START)), b"{}")},
        {TIMESTAMP_HEADER: "not a number"},
        {TIMESTAMP_HEADER: ""},
    ],
    ids=["zeros", "other key", "bad timestamp", "empty timestamp"],
)
async def test_a_forged_wake_up_is_a_401_and_runs_nothing(
    pair: Pair, headers: dict[str, str]
) -> None:
    note = pair.system.get(Note, "n1")
    await note.send("keep", 60)
    pair.clock.set(START + 60)
    response = await pair.wake(**headers)
    assert response.status_code == 401
    assert response.json()["code"] == "bad_signature"
    assert await note.text() == "keep"
    assert pair.timer.wakes == 0


async def test_an_unsigned_wake_up_is_a_401(pair: Pair) -> None:
    response = await pair.host.post(WAKE_PATH, content=b"{}")
    assert response.status_code == 401
    assert "not signed" in response.json()["message"]


async def test_a_replayed_wake_up_is_a_401_and_runs_nothing(pair: Pair) -> None:
    note = pair.system.get(Note, "n1")
    stamp = str(int(START))
    headers = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(KEY, stamp, b"{}")}
    assert (await pair.host.post(WAKE_PATH, content=b"{}", headers=headers)).status_code == 200
    await note.send("keep", 60)
    pair.clock.set(START + 60)
    again = await pair.host.post(WAKE_PATH, content=b"{}", headers=headers)
    assert again.status_code == 401
    assert again.json()["code"] == "replayed"
    pair.clock.set(START + 400)  # later, the captured callback is outside the window too
    stale = await pair.host.post(WAKE_PATH, content=b"{}", headers=headers)
    assert stale.status_code == 401
    assert stale.json()["code"] == "replayed"
    assert "window" in stale.json()["message"]
    assert await note.text() == "keep"
    assert pair.timer.wakes == 1


async def test_other_requests_to_the_wake_path_are_refused(pair: Pair) -> None:
    assert (await pair.host.get(WAKE_PATH)).status_code == 405
    huge = b"x" * (300 * 1024)
    response = await pair.wake(body=huge)
    assert response.status_code == 413
    assert pair.timer.wakes == 0


async def test_a_failing_wake_up_is_a_500_so_the_bouncer_calls_again(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken() -> None:
        raise RuntimeError("the disk is gone")

    monkeypatch.setattr(pair.system, "drain", broken)
    response = await pair.wake()
    assert response.status_code == 500
    assert response.json()["code"] == "wake_failed"


async def test_wake_endpoint_paths_other_than_its_own_reach_the_app(pair: Pair) -> None:
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = with_wake_endpoint(Starlette(routes=[Route("/hello", hello)]), pair.system)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=HOST) as c:
        assert (await c.get("/hello")).text == "hello"
    route = create_wake_route(pair.system, "/custom/wake")
    assert route.path == "/custom/wake"


async def test_reports_are_retried_until_the_bouncer_is_reachable(tmp_path: Path) -> None:
    clock = ManualClock(start=START)
    bouncer_app = create_bouncer_app(
        tmp_path / "w.db", tokens=[TOKEN], signing_key=KEY, clock=clock
    )
    calls = 0
    inner = httpx.ASGITransport(app=bouncer_app)

    class Flaky(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            nonlocal calls
            calls += 1
            if calls <= 3:
                raise httpx.ConnectError("refused")
            return await inner.handle_async_request(request)

    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    timer = BouncerTimer(
        "http://bouncer",
        token=TOKEN,
        callback_url=CALLBACK,
        signing_key=KEY,
        transport=Flaky(),
        sleep=sleep,
        rng=random.Random(1),
    )
    async with bouncer_app.state.bouncer as bouncer:
        async with ActorSystem(actors=[Note], clock=clock, timer=timer) as system:
            await system.get(Note, "n").send("x", 600)
            await timer.uploader.flush(5)
        assert len(delays) == 3
        assert await bouncer.store.counts() == {"pending": 1}


async def test_a_refusing_bouncer_is_retried_too(tmp_path: Path) -> None:
    clock = ManualClock(start=START)
    # The bouncer's minimum is longer than the host was told: registrations are refused.
    bouncer_app = create_bouncer_app(
        tmp_path / "w.db", tokens=[TOKEN], signing_key=KEY, clock=clock, min_delay=120
    )
    delays: list[float] = []
    retried = asyncio.Event()

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 3:
            retried.set()
            await asyncio.Event().wait()  # until the system closes

    timer = make_timer(bouncer_app, sleep=sleep, flush_timeout=0)
    async with (
        bouncer_app.state.bouncer as bouncer,
        ActorSystem(actors=[Note], clock=clock, timer=timer) as system,
    ):
        await system.get(Note, "n").send("x", 5)
        await asyncio.wait_for(retried.wait(), 5)
        assert timer.uploader.failures == 3
        assert await bouncer.store.counts() == {}


async def test_a_lost_answer_registers_the_same_wake_up_once(pair: Pair) -> None:
    await pair.system.get(Note, "n").send("x", 600)
    await pair.flush()
    from continuation._uploader import Report

    await pair.timer._send(Report(due_at=pair.timer.wake_at))  # a retry of the same report
    assert len(await pair.waits()) == 1


async def test_a_restarted_host_reports_its_earliest_due_time(tmp_path: Path) -> None:
    clock = ManualClock(start=START)
    bouncer_app = create_bouncer_app(
        tmp_path / "w.db", tokens=[TOKEN], signing_key=KEY, clock=clock
    )
    async with bouncer_app.state.bouncer as bouncer:
        async with ActorSystem(tmp_path / "h.db", actors=[Note], clock=clock) as system:
            await system.get(Note, "n").send("x", 900)  # scheduled before there was a timer
        timer = make_timer(bouncer_app)
        async with ActorSystem(tmp_path / "h.db", actors=[Note], clock=clock, timer=timer):
            await timer.uploader.flush(5)
        assert await bouncer.store.counts() == {"pending": 1}
        assert (await bouncer.store.next_due()) == START + 900


async def test_closing_sends_the_pending_report_first(tmp_path: Path) -> None:
    clock = ManualClock(start=START)
    bouncer_app = create_bouncer_app(
        tmp_path / "w.db", tokens=[TOKEN], signing_key=KEY, clock=clock
    )
    async with bouncer_app.state.bouncer as bouncer:
        timer = make_timer(bouncer_app)
        async with ActorSystem(actors=[Note], clock=clock, timer=timer) as system:
            await system.get(Note, "n").send("x", 900)
        assert await bouncer.store.counts() == {"pending": 1}
        timer.notice(START)  # after close: ignored
        await timer.aclose()


async def test_a_system_with_a_timer_starts_no_scheduler_loop(tmp_path: Path) -> None:
    timer = make_timer(Starlette(), flush_timeout=0)
    async with ActorSystem(actors=[Note], timer=timer) as system:
        assert system.timer is timer
        assert system._loop_task is None
    with pytest.raises(SystemClosedError):
        await timer.wake()
    with pytest.raises(InvalidArgumentError, match="one ActorSystem"):
        await timer.start(system)


async def test_the_timer_before_start(tmp_path: Path) -> None:
    timer = make_timer(Starlette())
    timer.notice(START)  # not started: nothing to tell
    assert await timer.flush()
    with pytest.raises(SystemClosedError, match="not started"):
        timer.uploader  # noqa: B018
    assert repr(timer) == f"BouncerTimer('http://bouncer', callback_url='{CALLBACK}')"
    assert timer.callback_url == CALLBACK
    with pytest.raises(SystemClosedError):
        await timer.wake()
    await timer.aclose()


def test_a_wake_route_needs_a_bouncer_timer() -> None:
    with pytest.raises(InvalidArgumentError, match="no BouncerTimer"):
        create_wake_route(ActorSystem())


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"url": "ftp://x"}, InvalidArgumentError, "http or https"),
        ({"url": 5}, TypeError, "must be a str"),
        ({"callback_url": "host/wake"}, InvalidArgumentError, "callback_url"),
        ({"token": ""}, InvalidArgumentError, "token"),
        ({"signing_key": b"short"}, InvalidArgumentError, "16 bytes"),
        ({"min_delay": 10, "max_delay": 5}, InvalidArgumentError, "greater"),
        ({"min_delay": -1}, InvalidArgumentError, "min_delay"),
        ({"window": True}, TypeError, "window"),
        ({"key_prefix": ""}, InvalidArgumentError, "key_prefix"),
        ({"retry": 2}, TypeError, "RetryPolicy"),
    ],
)
def test_bad_timer_options_are_refused(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    given: dict[str, Any] = {
        "url": "http://bouncer",
        "token": TOKEN,
        "callback_url": CALLBACK,
        "signing_key": KEY,
        **options,
    }
    url = given.pop("url")
    with pytest.raises(error, match=match):
        BouncerTimer(url, **given)


@pytest.mark.parametrize("timer", [object(), BouncerTimer, "bouncer"])
def test_the_system_refuses_what_is_not_a_timer(timer: Any) -> None:
    with pytest.raises(TypeError, match="timer must be a Timer"):
        ActorSystem(timer=timer)


async def test_a_wake_route_serves_the_endpoint_in_a_starlette_app(pair: Pair) -> None:
    app = Starlette(routes=[create_wake_route(pair.system, "/hooks/wake")])
    stamp = str(int(pair.clock.now()))
    headers = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(KEY, stamp, b"{}")}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=HOST) as c:
        response = await c.post("/hooks/wake", content=b"{}", headers=headers)
    assert response.status_code == 200
    assert pair.timer.wakes == 1


async def test_a_superseded_wait_that_cannot_be_cancelled_is_left_alone(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="continuation.bouncer")
    await pair.system.get(Note, "far").send("x", 3000)
    await pair.flush()
    (far,) = await pair.bouncer.store.fetch_due(START + 3000, 10)
    await pair.bouncer.cancel(far.id)  # gone already: the timer's DELETE gets a 409
    await pair.system.get(Note, "near").send("y", 600)
    await pair.flush()
    assert "could not cancel the superseded wait" in caplog.text
    assert [status for status, _, _ in await pair.waits()] == ["pending", "cancelled"]


async def test_a_report_with_no_due_time_sends_nothing(pair: Pair) -> None:
    from continuation._uploader import Report

    await pair.timer._send(Report(due_at=None))
    await pair.timer._send(Report())
    assert await pair.waits() == []


@pytest.mark.parametrize(
    ("response", "message", "code"),
    [
        (httpx.Response(502, text="bad gateway"), "502: bad gateway", None),
        (httpx.Response(503, content=b"[1]"), "503: [1]", None),
        (httpx.Response(500), "500: Internal Server Error", None),
        (httpx.Response(422, json={"code": "x", "message": "no"}), "422: no", "x"),
    ],
)
async def test_a_bouncer_error_answer_becomes_a_typed_error(
    response: httpx.Response, message: str, code: str | None
) -> None:
    from continuation.bouncer import BouncerRequestError

    timer = BouncerTimer(
        "http://bouncer",
        token=TOKEN,
        callback_url=CALLBACK,
        signing_key=KEY,
        transport=httpx.MockTransport(lambda request: response),
    )
    async with ActorSystem(clock=ManualClock(START), timer=timer):
        with pytest.raises(BouncerRequestError, match=re.escape(message)) as info:
            await timer._request("POST", "/waits", {})
    assert info.value.status == response.status_code
    assert info.value.code == code


async def test_a_wake_up_answers_even_if_the_next_report_cannot_be_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(0.001)

    timer = BouncerTimer(
        "http://bouncer",
        token=TOKEN,
        callback_url=CALLBACK,
        signing_key=KEY,
        transport=httpx.MockTransport(down),
        flush_timeout=0.05,
        sleep=sleep,
    )
    async with ActorSystem(actors=[Note], clock=ManualClock(START), timer=timer) as system:
        await system.get(Note, "n").send("x", 600)
        assert await timer.wake() == START + 600
    assert "the next wake-up is not registered yet" in caplog.text
