"""RpcServer: validation before anything runs, refusal codes, per-call outcomes, downstream."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from operation_chain import (
    RESULT,
    CallOp,
    ExecutionPolicy,
    GetOp,
    OperationChain,
    OperationProxy,
    RemoteError,
    chain_of,
    decode,
)
from rpc import CallRef, DownstreamMessage
from rpc._batch import chain_form
from rpc._server import RpcServer

from .host import Counter, FakeHost


def call(proxy: OperationProxy, wire_id: int = 0, **extra: Any) -> dict[str, Any]:
    return {"id": wire_id, "chain": chain_form(chain_of(proxy)), **extra}


def batch(*calls: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "calls": list(calls)}


async def post(
    server: RpcServer, body: Any, binding: str = "counter", principal: Any = None
) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    status, content = await server.handle_body(binding, "a", raw, principal)
    return status, orjson.loads(content)


@pytest.fixture
def server(host: FakeHost) -> RpcServer:
    return RpcServer(host)


p = OperationProxy()


# -- refusals: nothing runs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b"[1, 2]", "not a valid batch"),
        ({"calls": []}, "v: Field required"),
        ({"v": 2, "calls": [call(p.a())]}, "v: Input should be 1"),
        ({"v": 1, "calls": []}, "calls: List should have at least 1 item"),
        ({"v": 1, "calls": [{"id": -1, "chain": {}}]}, "calls.0.id: Input should be greater"),
        ({"v": 1, "calls": [{"id": True, "chain": {}}]}, "calls.0.id: Input should be a valid"),
        ({"v": 1, "calls": [{"id": 0, "chain": []}]}, "calls.0.chain: Input should be a valid"),
        ({"v": 1, "calls": [{"id": 0, "chain": {}, "x": 1}]}, "calls.0.x: Extra inputs"),
    ],
)
async def test_a_malformed_batch_is_refused(
    server: RpcServer, host: FakeHost, body: Any, message: str
) -> None:
    status, answer = await post(server, body)
    assert status == 400
    assert answer["error"]["code"] == "malformed_request"
    assert message in answer["error"]["message"]
    assert host.chains == []


LONG_CHAIN = OperationChain.model_construct(ops=tuple(GetOp("a") for _ in range(51)))
WIDE_CALL = OperationChain.model_construct(ops=(GetOp("f"), CallOp(tuple(range(101)), {})))


@pytest.mark.parametrize(
    ("chain", "status", "code", "message"),
    [
        ({"ops": []}, 400, "invalid_chain", "in its JSON form"),
        ({"v": 1, "ops": [{"op": "run"}]}, 400, "invalid_chain", "$.ops[0]"),
        ({"v": 1, "ops": []}, 400, "invalid_chain", "at least one operation"),
        (chain_form(chain_of(p.a(RESULT))), 400, "invalid_chain", "the marker <result>"),
        (chain_form(chain_of(p._secret())), 403, "chain_refused", "'_secret'"),
        (chain_form(chain_of(p.f(k_=1, _x=2))), 403, "chain_refused", "'_x'"),
        (chain_form(LONG_CHAIN), 400, "chain_limit", "51 > 50 (max_operations)"),
        (chain_form(WIDE_CALL), 400, "chain_limit", "101 > 100 (max_arguments)"),
    ],
)
async def test_a_bad_chain_refuses_the_batch_naming_the_call(
    server: RpcServer, host: FakeHost, chain: Any, status: int, code: str, message: str
) -> None:
    got, answer = await post(server, batch(call(p.increment()), {"id": 1, "chain": chain}))
    assert got == status
    error = answer["error"]
    assert error["code"] == code
    assert error["message"].startswith("call 1: ")
    assert message in error["message"]
    assert [(c["id"], c["code"]) for c in error["calls"]] == [(1, code)]
    assert host.chains == []  # the valid neighbour did not run either


async def test_every_refused_call_is_named(server: RpcServer) -> None:
    status, answer = await post(server, batch(call(p._a(), 0), call(p.ok(), 1), call(p._b(), 2)))
    assert status == 403
    assert "(and 1 more refused calls)" in answer["error"]["message"]
    assert [c["id"] for c in answer["error"]["calls"]] == [0, 2]


async def test_a_call_id_used_twice_is_refused(server: RpcServer) -> None:
    status, answer = await post(server, batch(call(p.a(), 3), call(p.b(), 3)))
    assert (status, answer["error"]["code"]) == (400, "malformed_request")
    assert "the call id 3 is used twice" in answer["error"]["message"]


@pytest.mark.parametrize("target", [0, 5, "0"])
async def test_a_reference_must_name_an_earlier_call(server: RpcServer, target: Any) -> None:
    body = batch(call(p.add(CallRef(target), 1), 0))
    status, answer = await post(server, body)
    assert (status, answer["error"]["code"]) == (400, "bad_reference")
    assert "not an earlier call of this batch" in answer["error"]["message"]


async def test_an_unknown_binding_is_refused(server: RpcServer) -> None:
    status, answer = await post(server, batch(call(p.a())), binding="ghost")
    assert (status, answer["error"]["code"]) == (404, "unknown_binding")
    assert "'ghost'" in answer["error"]["message"]


async def test_a_request_over_the_policy_size_is_refused(host: FakeHost) -> None:
    server = RpcServer(host, policy=ExecutionPolicy(max_encoded_size=64))
    status, answer = await post(server, batch(call(p.echo("x" * 100))))
    assert (status, answer["error"]["code"]) == (413, "request_too_large")
    assert "> 64" in answer["error"]["message"]


async def test_the_policy_is_passed_to_the_host(host: FakeHost) -> None:
    server = RpcServer(host, policy=ExecutionPolicy(strict=True))
    status, answer = await post(server, batch(call(p.increment())))
    assert status == 200
    error = decode(answer["results"][0]["error"])
    assert isinstance(error, RemoteError)
    assert error.type_name == "operation_chain.ChainSecurityError"
    assert "@expose" in error.message


def test_the_server_needs_a_host_and_a_policy() -> None:
    with pytest.raises(TypeError, match="needs an ActorHost"):
        RpcServer(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="policy must be an ExecutionPolicy"):
        RpcServer(FakeHost(), policy={"strict": True})  # type: ignore[arg-type]


# -- running -------------------------------------------------------------------------------


async def test_results_and_errors_are_encoded_per_call(server: RpcServer) -> None:
    body = batch(call(p.increment(), 0), call(p.fail("x"), 1), call(p.echo(b"\x00"), 2))
    status, answer = await post(server, body)
    assert status == 200
    ok, failed, raw = answer["results"]
    assert (ok["id"], decode(ok["ok"])) == (0, 1)
    error = decode(failed["error"])
    assert isinstance(error, ValueError)
    assert "Traceback" in error.__notes__[0]
    assert decode(raw["ok"]) == (b"\x00",)


async def test_only_calls_with_reply_get_a_result(server: RpcServer, host: FakeHost) -> None:
    body = batch(call(p.increment(4), 0, reply=False), call(p.add(CallRef(0), 1), 1))
    status, answer = await post(server, body)
    assert status == 200
    assert answer["results"] == [{"id": 1, "ok": 5}]
    assert host.chains == ["increment(4)", "add(4, 1)"]


async def test_a_failed_reference_fails_the_calls_that_use_it(
    server: RpcServer, host: FakeHost
) -> None:
    body = batch(
        call(p.fail("first"), 0, reply=False),
        call(p.add(CallRef(0), 1), 1),
        call(p.increment(), 2),
    )
    _, answer = await post(server, body)
    first, second = answer["results"]
    assert str(decode(first["error"])) == "first"
    assert decode(second["ok"]) == 1
    assert host.chains == ["fail('first')", "increment()"]


async def test_an_unencodable_result_becomes_a_type_error(server: RpcServer) -> None:
    _, answer = await post(server, batch(call(p.opaque())))
    error = decode(answer["results"][0]["error"])
    assert isinstance(error, TypeError)
    assert "the call ran, but its result cannot be sent back" in str(error)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class Grumpy(Counter):
    def grumble(self) -> None:
        raise Unprintable()

    def forward(self) -> None:
        raise RemoteError("elsewhere.Error", "far away", "Traceback: remote frames")


async def test_an_error_that_cannot_be_encoded_still_settles_its_call() -> None:
    server = RpcServer(FakeHost(counter=Grumpy))
    _, answer = await post(server, batch(call(p.grumble())))
    error = decode(answer["results"][0]["error"])
    assert isinstance(error, RemoteError)
    assert error.type_name == "tests.rpc.test_server.Unprintable"
    assert "could not be encoded" in error.message


async def test_redacted_errors_carry_no_traceback() -> None:
    server = RpcServer(FakeHost(counter=Grumpy), redact_tracebacks=True)
    _, answer = await post(server, batch(call(p.fail(), 0), call(p.forward(), 1)))
    plain, remote = (decode(r["error"]) for r in answer["results"])
    assert isinstance(plain, ValueError)
    assert not hasattr(plain, "__notes__")
    assert isinstance(remote, RemoteError)
    assert remote.remote_traceback is None
    assert "Traceback" not in orjson.dumps(answer).decode()


async def test_the_principal_is_passed_to_the_host(server: RpcServer) -> None:
    _, answer = await post(server, batch(call(p.whoami())), principal="ada")
    assert decode(answer["results"][0]["ok"]) == "ada"


# -- downstream ----------------------------------------------------------------------------


class Collect:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(orjson.loads(frame))


def test_downstream_messages_go_to_the_subscribers_of_their_client_ids(host: FakeHost) -> None:
    server = RpcServer(host)
    one, two = Collect(), Collect()
    server.subscribe("a", one)
    server.subscribe("b", one)
    server.subscribe("b", two)
    assert host.listener_count == 1
    host.send_downstream("room", "r1", ("a", "b", "a", "c"), {"n": 1})
    assert one.frames == [
        {
            "type": "downstream",
            "binding": "room",
            "instance": "r1",
            "client_ids": ["a", "b"],
            "payload": {"n": 1},
        }
    ]
    assert [f["client_ids"] for f in two.frames] == [["b"]]
    host.send_downstream("room", "r1", ("nobody",), 1)
    assert len(one.frames) == 1


def test_the_host_listener_lives_while_someone_is_subscribed(host: FakeHost) -> None:
    server = RpcServer(host)
    one = Collect()
    server.unsubscribe("a", one)  # not subscribed: nothing happens
    server.subscribe("a", one)
    server.subscribe("b", one)
    server.unsubscribe("a", one)
    assert host.listener_count == 1
    server.unsubscribe("b", one)
    assert host.listener_count == 0


def test_a_payload_the_codec_cannot_encode_is_dropped_and_logged(
    host: FakeHost, caplog: pytest.LogCaptureFixture
) -> None:
    server = RpcServer(host)
    one = Collect()
    server.subscribe("a", one)
    with caplog.at_level(logging.ERROR, logger="rpc.server"):
        host.send_downstream("room", "r1", ("a",), object())
    assert one.frames == []
    assert "payload cannot be encoded" in caplog.text
    assert DownstreamMessage("b", "i", ("a",), 1).client_ids == ("a",)


async def test_an_integer_past_64_bits_in_a_request_stays_an_integer(server: RpcServer) -> None:
    form = chain_form(chain_of(p.echo(0)))
    raw = orjson.dumps(batch({"id": 0, "chain": form})).replace(b"[0]", b"[18446744073709551617]")
    status, answer = await post(server, raw)
    assert status == 200
    assert decode(answer["results"][0]["ok"]) == (2**64 + 1,)
