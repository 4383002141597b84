"""Fuzzing ``POST /waits``: random JSON, mutated valid bodies and raw bytes.

Every answer is a 201/200 or a 4xx in the documented shape, never a 5xx; every wait a 201
announced is stored as announced; the wait registered before the fuzzing is untouched. The
bouncer runs in process (ASGI) on a manual clock, in one event loop for the whole test.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from continuation import ManualClock
from continuation.bouncer import create_bouncer_app

from .conftest import AUTH, KEY, START, TOKEN

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
REFUSALS = {401: "unauthenticated", 413: "too_large", 422: None}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
field_values = json_values | st.sampled_from(
    [
        60,
        60.5,
        7200,
        59.999,
        START + 61,
        "2027-01-15T09:00:00Z",
        "2027-01-15T09:00:00",
        "http://127.0.0.1/cb",
        "https://x.example/wake?a=1",
        "ftp://x/",
        "http://",
        "",
        "k" * 201,
    ]
)
VALID = {"delay": 90, "callback": "http://receiver/cb", "payload": {"n": 1}, "key": None}


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    body: dict[str, Any] = dict(VALID)
    # A few keys only, so that registrations collide and idempotency is exercised.
    body["key"] = draw(st.sampled_from([None, None, None, "k1", "k2", "k3"]))
    for name in draw(st.lists(st.sampled_from([*VALID, "at", "extra"]), max_size=2)):
        if draw(st.booleans()):
            body.pop(name, None)
        else:
            body[name] = draw(field_values)
    if body.get("key") is None:
        body.pop("key", None)
    return body


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


bodies = (
    mutated().map(_encode)
    | json_values.map(_encode)
    | st.binary(max_size=64)
    | mutated().map(_encode).map(lambda b: b[: len(b) // 2])
)


class Harness:
    """One bouncer and one client for the whole test, on one event loop."""

    def __init__(self, database: Path) -> None:
        self.clock = ManualClock(start=START)
        self.app = create_bouncer_app(
            database, tokens=[TOKEN], signing_key=KEY, clock=self.clock, max_body=4096
        )
        self.runner = asyncio.Runner()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://b", headers=AUTH
        )
        self.created: dict[str, dict[str, Any]] = {}
        self.run(self.app.state.bouncer.start())

    def run(self, awaitable: Any) -> Any:
        return self.runner.run(awaitable)

    def close(self) -> None:
        self.run(self.client.aclose())
        self.run(self.app.state.bouncer.aclose())
        self.runner.close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    harness = Harness(tmp_path_factory.mktemp("fuzz") / "waits.db")
    sentinel = harness.run(
        harness.client.post("/waits", json={**VALID, "key": "sentinel", "payload": [1, "x"]})
    ).json()
    harness.created[sentinel["id"]] = sentinel
    yield harness
    harness.close()


@FUZZ
@given(body=bodies, authorised=st.integers(0, 9).map(bool))
def test_post_waits_never_fails_and_never_loses_a_stored_wait(
    harness: Harness, body: bytes, authorised: bool
) -> None:
    headers = {} if authorised else {"authorization": "Bearer nope-nope-nope-nope"}
    response = harness.run(harness.client.post("/waits", content=body, headers=headers))
    assert response.status_code < 500, response.text
    answer = response.json()
    if response.status_code in (200, 201):
        assert authorised
        stored = harness.run(harness.client.get(f"/waits/{answer['id']}")).json()
        assert stored == answer
        if response.status_code == 201:
            assert answer["id"] not in harness.created
            harness.created[answer["id"]] = answer
        else:
            assert answer == harness.created[answer["id"]], "a key returned another wait"
        assert 60 <= answer["due_at"] - START <= 7200
        assert answer["callback"].startswith(("http://", "https://"))
    else:
        expected = REFUSALS[response.status_code]
        assert answer["code"] == (expected or answer["code"])
        assert isinstance(answer["message"], str)
        if not authorised:
            assert response.status_code == 401
    # Nothing stored before is lost or changed, whatever came in.
    wait_id = random.choice(list(harness.created))
    assert harness.run(harness.client.get(f"/waits/{wait_id}")).json() == harness.created[wait_id]


def test_every_announced_wait_is_stored(harness: Harness) -> None:
    counts = harness.run(harness.app.state.bouncer.store.counts())
    assert counts == {"pending": len(harness.created)}
    assert len(harness.created) > 10, "the fuzzing hardly ever registered a wait"
