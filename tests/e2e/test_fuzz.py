"""Fuzzing a real server: random and mutated request bodies and frames.

Every answer must be a 4xx refusal in the documented shape, or a 200 whose calls each
settled with a value or an error; never a 5xx, never a hang. After each example a valid call
must still work. The server runs in a thread (hypothesis drives synchronous tests) for the
whole module.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from rpc.server import create_rpc_app

from ..rpc.host import FakeHost
from .conftest import free_port

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Calculator:
    """A fuzz target with nothing that blocks: whatever a mutated chain reaches returns."""

    def __init__(self, instance: str) -> None:
        self.total = 0

    def add(self, a: Any, b: Any) -> Any:
        return a + b

    def echo(self, *args: Any, **kwargs: Any) -> Any:
        return [args, kwargs]


VALID_BATCH: dict[str, Any] = {
    "v": 1,
    "calls": [
        {
            "id": 0,
            "chain": {
                "v": 1,
                "ops": [
                    {"op": "get", "name": "add"},
                    {"op": "call", "args": [1, 2], "kwargs": {}},
                ],
            },
        },
        {
            "id": 1,
            "chain": {
                "v": 1,
                "ops": [
                    {"op": "get", "name": "echo"},
                    {
                        "op": "call",
                        "args": [{"$obj": ["rpc.ref", {"call": 0}]}, {"$bytes": "AAE="}],
                        "kwargs": {"k": {"$tuple": [1, None]}},
                    },
                ],
            },
            "reply": True,
        },
    ],
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["$ref", "$id", "$chain", "$obj", "$exc", "get", "call", "v", "ops"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=6) | st.sampled_from(["$tuple", "$ref", "v", "id", "op", "name"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=24,
)


def paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in a JSON tree, as a path of keys and indexes."""
    found = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            found += paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found += paths(value, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """A valid tree with one to three positions replaced, removed or given an extra key."""
    tree: Any = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        candidates = paths(tree)
        deep = [path for path in candidates if len(path) >= 6]  # inside a chain's operations
        path = draw(st.sampled_from(deep if deep and draw(st.booleans()) else candidates))
        if not path:
            tree = draw(json_values)
            continue
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "remove", "extra"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "remove":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=5))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return tree


def dump(tree: Any) -> bytes:
    """JSON bytes; the standard library writes integers of any size, as a peer might."""
    return json.dumps(tree).encode()


bodies = st.binary(max_size=300) | json_values.map(dump) | mutated(VALID_BATCH).map(dump)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    config = uvicorn.Config(
        create_rpc_app(FakeHost(calc=Calculator)),
        host="127.0.0.1",
        port=free_port(),
        ws="websockets-sansio",
        lifespan="off",
        log_config=None,
        log_level="critical",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:  # polling for the socket to be up
        assert thread.is_alive(), "uvicorn stopped before it started"
        time.sleep(0.005)
    yield config.port
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def http(port: int) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/rpc", timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def socket(port: int) -> Iterator[ClientConnection]:
    with connect(f"ws://127.0.0.1:{port}/rpc", compression=None) as connection:
        yield connection


def check_answer(status: int, body: Any) -> None:
    """A refusal in the documented shape, or a batch result with a value or error per call."""
    assert status < 500, body
    assert isinstance(body, dict)
    event(f"status {status}: {body['error']['code'] if status != 200 else 'results'}")
    if status != 200:
        assert 400 <= status < 500
        assert isinstance(body["error"]["code"], str)
        assert isinstance(body["error"]["message"], str)
        return
    if "subscribed" in body or "unsubscribed" in body:  # the answer to a (un)subscribe frame
        assert len(body) == 1
        return
    for result in body["results"]:
        assert isinstance(result["id"], int)
        assert ("ok" in result) != ("error" in result)


def check_still_serving(http: httpx.Client) -> None:
    response = http.post("/calc/a", content=orjson.dumps(VALID_BATCH))
    assert response.status_code == 200
    assert response.json()["results"][0] == {"id": 0, "ok": 3}


@FUZZ
@given(body=bodies, binding=st.sampled_from(["calc", "calc", "nope"]))
def test_random_and_mutated_http_bodies_get_clean_answers(
    http: httpx.Client, body: bytes, binding: str
) -> None:
    response = http.post(f"/{binding}/a", content=body)
    check_answer(response.status_code, response.json())
    check_still_serving(http)


@FUZZ
@given(
    frame=mutated(
        {"type": "call", "id": 7, "binding": "calc", "instance": "a", "batch": VALID_BATCH}
    )
    | mutated({"type": "subscribe", "id": 8, "client_id": "c"})
    | bodies
)
def test_random_and_mutated_frames_get_one_clean_reply_each(
    socket: ClientConnection, http: httpx.Client, frame: Any
) -> None:
    socket.send(frame if isinstance(frame, bytes) else dump(frame).decode())
    reply = orjson.loads(socket.recv(timeout=10))
    assert reply["type"] == "reply"
    check_answer(reply["status"], reply["body"])
    check_still_serving(http)
