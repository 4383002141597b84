"""The bouncer's HTTP API: registration, validation, authentication, idempotency, inspection
and cancellation. Every refusal is JSON with a machine-readable ``code``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from continuation import InvalidArgumentError, ManualClock, SystemClosedError
from continuation.bouncer import Bouncer, WaitRequest, create_bouncer_app

from .conftest import AUTH, CALLBACK, KEY, START, TOKEN, Receiver, Served


async def test_a_wait_is_registered_with_its_due_time(served: Served) -> None:
    response = await served.client.post(
        "/waits", json={"delay": 90, "callback": CALLBACK, "payload": {"flow": 7}}
    )
    assert response.status_code == 201
    answer = response.json()
    assert answer["due_at"] == START + 90
    assert answer["status"] == "pending"
    assert answer["payload"] == {"flow": 7}
    assert answer["attempts"] == 0
    assert await served.state(answer["id"]) == answer


@pytest.mark.parametrize(
    "at",
    [START + 120, "2027-01-15T08:02:00Z"],
    ids=["epoch seconds", "iso 8601"],
)
async def test_at_takes_epoch_seconds_or_an_aware_iso_datetime(served: Served, at: Any) -> None:
    if isinstance(at, str):
        served.clock.set(datetime.fromisoformat(at).timestamp() - 120)
    answer = await served.register(at=at)
    assert answer["due_at"] == served.clock.now() + 120


@pytest.mark.parametrize(
    ("body", "given"),
    [
        ({"delay": 59.9}, "59.9"),
        ({"delay": 7200.5}, "7200.5"),
        ({"delay": 0}, "0"),
        ({"delay": -30}, "-30"),
        ({"at": START - 10}, "-10"),
        ({"at": START + 10_000}, "10000"),
    ],
)
async def test_a_delay_outside_the_bounds_is_a_422_naming_them(
    served: Served, body: dict[str, Any], given: str
) -> None:
    response = await served.client.post("/waits", json={**body, "callback": CALLBACK})
    assert response.status_code == 422
    answer = response.json()
    assert answer["code"] == "delay_out_of_range"
    assert answer["min_delay"] == 60
    assert answer["max_delay"] == 7200
    assert "between 60 and 7200 seconds" in answer["message"]
    assert f"not {given}" in answer["message"]


@pytest.mark.parametrize("delay", [60, 7200])
async def test_the_bounds_themselves_are_accepted(served: Served, delay: float) -> None:
    assert (await served.register(delay=delay))["due_at"] == START + delay


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong-token-0123456789"},
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": TOKEN},
        {"authorization": "Bearer"},
        {"authorization": f"Bearer {TOKEN}x"},
        {"authorization": "Bearer t\u00e9st-token-0123456789abcdef".encode("latin-1")},
    ],
    ids=["missing", "wrong", "basic", "no scheme", "empty", "longer", "non-ascii"],
)
async def test_a_missing_or_wrong_token_is_a_401(served: Served, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=served.app), base_url="http://bouncer"
    ) as anonymous:
        wait = await served.register()
        for method, path in (("POST", "/waits"), ("GET", f"/waits/{wait['id']}")):
            body = orjson.dumps({"delay": 60, "callback": CALLBACK})
            response = await anonymous.request(method, path, content=body, headers=headers)
            assert response.status_code == 401
            assert response.json()["code"] == "unauthenticated"
            assert response.headers["www-authenticate"] == "Bearer"
        response = await anonymous.delete(f"/waits/{wait['id']}", headers=headers)
        assert response.status_code == 401
    assert (await served.state(wait["id"]))["status"] == "pending"


async def test_any_of_several_tokens_is_accepted_for_rotation(served: Served) -> None:
    headers = {"authorization": "bearer second-token-for-rotation"}
    body = {"delay": 60, "callback": CALLBACK}
    response = await served.client.post("/waits", json=body, headers=headers)
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("content", "loc", "kind"),
    [
        (b"not json", [], "json_invalid"),
        (b"", [], "json_invalid"),
        (b"[1, 2]", [], "model_type"),
        (b'{"delay": 60}', ["callback"], "missing"),
        (b'{"callback": "http://a/"}', [], "value_error"),
        (b'{"delay": 60, "at": 1, "callback": "http://a/"}', [], "value_error"),
        (b'{"delay": "60", "callback": "http://a/"}', ["delay"], "float_type"),
        (b'{"delay": true, "callback": "http://a/"}', ["delay"], "float_type"),
        (b'{"delay": NaN, "callback": "http://a/"}', ["delay"], "finite_number"),
        (b'{"delay": 60, "callback": "http://a/", "extra": 1}', ["extra"], "extra_forbidden"),
        (b'{"delay": 60, "callback": "http://a/", "key": ""}', ["key"], "string_too_short"),
        (b'{"delay": 60, "callback": "http://a/", "payload": [Infinity]}', ["payload"], None),
        (b'{"at": "2030-01-01T00:00:00", "callback": "http://a/"}', ["at"], "value_error"),
    ],
)
async def test_a_malformed_body_is_a_422_with_machine_readable_errors(
    served: Served, content: bytes, loc: list[Any], kind: str | None
) -> None:
    response = await served.client.post("/waits", content=content)
    assert response.status_code == 422
    answer = response.json()
    assert answer["code"] == "invalid_request"
    assert answer["message"].startswith("the wait is not valid: ")
    first = answer["errors"][0]
    assert first["loc"][: len(loc)] == loc
    if kind is not None:
        assert first["type"] == kind


@pytest.mark.parametrize(
    "callback",
    [
        "ftp://example.com/x",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "http://",
        "/relative/path",
        "http://[::1",
        "http://host:0/",
        "http://host:99999/",
        "http://ho st/",
        "http://host/\n",
        "http://" + "a" * 2050,
    ],
)
async def test_a_callback_that_is_not_an_http_url_is_refused(served: Served, callback: str) -> None:
    response = await served.client.post("/waits", json={"delay": 60, "callback": callback})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["callback"]


async def test_the_same_key_twice_returns_the_existing_wait(served: Served) -> None:
    body = {"delay": 60, "callback": CALLBACK, "key": "flow-1:step-3"}
    first = await served.client.post("/waits", json=body)
    again = await served.client.post("/waits", json={**body, "delay": 600})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    other = await served.client.post("/waits", json={**body, "key": "flow-2:step-3"})
    assert other.status_code == 201
    assert other.json()["id"] != first.json()["id"]


async def test_a_cancelled_wait_frees_its_key(served: Served) -> None:
    first = await served.register(key="k")
    await served.client.delete(f"/waits/{first['id']}")
    second = await served.register(key="k")
    assert second["id"] != first["id"]
    assert (await served.register(key="k"))["id"] == second["id"]


async def test_a_delivered_wait_keeps_its_key(served: Served, receiver: Receiver) -> None:
    first = await served.register(key="k")
    await served.advance(60)
    assert receiver.ids() == [first["id"]]
    again = await served.register(key="k")
    assert again["id"] == first["id"]
    assert again["status"] == "delivered"


async def test_delete_cancels_a_pending_wait_which_is_then_never_delivered(
    served: Served, receiver: Receiver
) -> None:
    wait = await served.register()
    response = await served.client.delete(f"/waits/{wait['id']}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] == START
    await served.advance(3600)
    assert receiver.calls == []
    again = await served.client.delete(f"/waits/{wait['id']}")
    assert again.status_code == 409
    assert again.json() == {
        "code": "not_pending",
        "message": f"cannot cancel wait {wait['id']}: it is cancelled",
    }


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_an_unknown_wait_is_a_404(served: Served, method: str) -> None:
    response = await served.client.request(method, "/waits/nope")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "message": "no wait has the id 'nope'"}


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nothing", 404, "not_found"),
        ("GET", "/waits/", 404, "not_found"),
        ("PUT", "/waits", 405, "method_not_allowed"),
        ("GET", "/waits", 405, "method_not_allowed"),
        ("PATCH", "/waits/x", 405, "method_not_allowed"),
    ],
)
async def test_other_routes_answer_json_errors(
    served: Served, method: str, path: str, status: int, code: str
) -> None:
    response = await served.client.request(method, path)
    assert response.status_code == status
    assert response.json()["code"] == code


async def test_a_body_over_the_limit_is_a_413(open_bouncer: Callable[..., Any]) -> None:
    async with open_bouncer(max_body=1024) as served:
        body = {"delay": 60, "callback": CALLBACK, "payload": "x" * 2000}
        response = await served.client.post("/waits", json=body)
        assert response.status_code == 413
        assert response.json()["code"] == "too_large"

        async def chunks() -> Any:
            for _ in range(3):
                yield b"x" * 600

        streamed = await served.client.post("/waits", content=chunks())
        assert streamed.status_code == 413


async def test_health_needs_no_token(served: Served) -> None:
    response = await served.client.get("/health", headers={"authorization": ""})
    assert response.json() == {"status": "ok"}


async def test_the_payload_comes_back_exactly(served: Served, receiver: Receiver) -> None:
    payload = {"big": 10**30, "text": "h\u00e9llo \U0001f600", "nested": [{"a": [1.5, None]}]}
    wait = await served.register(payload=payload)
    assert (await served.state(wait["id"]))["payload"] == payload
    await served.advance(60)
    assert receiver.calls[0].body == {"id": wait["id"], "due_at": START + 60, "payload": payload}


async def test_a_store_failure_is_a_503_and_the_service_keeps_running(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    from continuation import StoreError

    async def broken(*args: Any) -> None:
        raise StoreError("disk on fire")

    monkeypatch.setattr(served.bouncer.store, "get", broken)
    response = await served.client.get("/waits/x")
    assert response.status_code == 503
    assert response.json()["code"] == "unavailable"
    monkeypatch.undo()
    assert (await served.register())["status"] == "pending"


async def test_an_unexpected_failure_is_a_500_and_the_service_keeps_running(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(served.bouncer, "get", broken)
    response = await served.client.get("/waits/x")
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    monkeypatch.undo()
    assert (await served.register())["status"] == "pending"


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"tokens": []}, InvalidArgumentError, "at least one token"),
        ({"tokens": "short"}, InvalidArgumentError, "at least 16"),
        ({"tokens": [b"x" * 20]}, TypeError, "tokens must be str"),
        ({"tokens": ["x" * 15 + "\n"]}, InvalidArgumentError, "printable"),
        ({"max_body": 0}, InvalidArgumentError, "max_body"),
        ({"signing_key": b"short"}, InvalidArgumentError, "at least 16 bytes"),
        ({"min_delay": 100, "max_delay": 10}, InvalidArgumentError, "greater than"),
        ({"min_delay": -1}, InvalidArgumentError, "non-negative"),
        ({"max_delay": float("inf")}, InvalidArgumentError, "finite"),
        ({"callback_timeout": "9"}, TypeError, "number"),
        ({"retry": 3}, TypeError, "RetryPolicy"),
        ({"clock": ManualClock}, TypeError, "Clock instance"),
        ({"database": 3}, TypeError, "path"),
    ],
)
def test_bad_options_are_refused_with_typed_errors(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    defaults: dict[str, Any] = {"tokens": [TOKEN], "signing_key": KEY}
    database = options.pop("database", ":memory:")
    with pytest.raises(error, match=match):
        create_bouncer_app(database, **{**defaults, **options})


async def test_a_bouncer_refuses_work_before_start_and_after_close(tmp_path: Path) -> None:
    bouncer = Bouncer(tmp_path / "w.db", signing_key=KEY, clock=ManualClock())
    request = WaitRequest(delay=60, callback=CALLBACK)
    with pytest.raises(SystemClosedError, match="not running"):
        await bouncer.register(request)
    async with bouncer:
        assert "running" in repr(bouncer)
        with pytest.raises(SystemClosedError, match="create a new one"):
            await bouncer.start()
    with pytest.raises(SystemClosedError, match="closed"):
        await bouncer.get("x")
    await bouncer.aclose()
    never_started = Bouncer(":memory:", signing_key=KEY)
    await never_started.aclose()


async def test_the_app_lifespan_starts_and_stops_the_bouncer(db: str) -> None:
    app = create_bouncer_app(db, tokens=[TOKEN], signing_key=KEY, clock=ManualClock(START))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://b", headers=AUTH
        ) as client,
    ):
        response = await client.post("/waits", json={"delay": 60, "callback": CALLBACK})
        assert response.status_code == 201
    assert "closed" in repr(app.state.bouncer)


def test_a_wait_request_computes_its_due_time() -> None:
    moment = datetime(2030, 1, 1, tzinfo=UTC)
    assert WaitRequest(at=moment, callback=CALLBACK).due_at(0) == moment.timestamp()
    assert WaitRequest(at=5, callback=CALLBACK).due_at(0) == 5.0
    assert WaitRequest(delay=5, callback=CALLBACK).due_at(10) == 15.0
