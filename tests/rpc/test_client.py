"""The client: chaining, batching, pipelining, per-call errors, timeouts and closing.

Everything here runs over ``InProcessTransport`` (full encode/decode, no sockets), wrapped
in a ``CountingTransport`` where a test counts round trips.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from operation_chain import (
    RemoteError,
    UnsupportedTypeError,
    register_type,
)
from rpc import (
    BindingNotFoundError,
    ChainRefusedError,
    ClientClosedError,
    DownstreamMessage,
    HttpTransport,
    InProcessTransport,
    RpcClient,
    RpcProxy,
    RpcRequest,
    RpcResponse,
    RpcTimeoutError,
    Transport,
    TransportError,
    create_rpc_client,
)
from rpc.testing import create_test_client

from .conftest import CountingTransport, actor
from .host import Counter, FakeHost


def counting_client(host: FakeHost, **options: Any) -> tuple[RpcClient, CountingTransport]:
    transport = CountingTransport(InProcessTransport(host))
    return create_rpc_client("counter", "a", transport=transport, **options), transport


class ScriptedTransport(Transport):
    """Answers every request with the next canned response (or raises it)."""

    def __init__(self, *answers: RpcResponse | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[RpcRequest] = []

    async def handle_async_request(self, request: RpcRequest) -> RpcResponse:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class HangingTransport(Transport):
    """Never answers; records whether the request was cancelled."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def handle_async_request(self, request: RpcRequest) -> RpcResponse:
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled.set()
        raise AssertionError("unreachable")


# -- chaining and batching -----------------------------------------------------------------


async def test_attribute_paths_and_calls_are_one_chain_and_one_round_trip(host: FakeHost) -> None:
    client, transport = counting_client(host)
    async with client as counter:
        assert await counter.rooms["lobby"].post("hi") == "lobby: hi"
    assert transport.calls_sent() == [1]
    assert host.chains == ["rooms['lobby'].post('hi')"]


async def test_calls_in_one_tick_travel_as_one_batch_and_run_in_call_order(
    host: FakeHost,
) -> None:
    client, transport = counting_client(host)
    async with client as counter:
        results = await asyncio.gather(*[counter.increment(i) for i in range(1, 21)])
    assert transport.calls_sent() == [20]
    assert actor(host).log == [f"increment:{i}" for i in range(1, 21)]
    assert results == [sum(range(1, i + 1)) for i in range(1, 21)]


async def test_calls_awaited_in_later_ticks_travel_in_later_batches(host: FakeHost) -> None:
    client, transport = counting_client(host)
    async with client as counter:
        assert await counter.increment() == 1
        assert await counter.increment() == 2
    assert transport.calls_sent() == [1, 1]


async def test_each_call_of_a_batch_settles_on_its_own(counter: RpcProxy) -> None:
    results = await asyncio.gather(
        counter.increment(), counter.fail("no"), counter.increment(), return_exceptions=True
    )
    assert results[0] == 1
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "no"
    assert results[2] == 2


async def test_builtin_errors_come_back_typed_with_the_remote_traceback(
    counter: RpcProxy,
) -> None:
    with pytest.raises(ValueError, match="boom") as info:
        await counter.fail()
    (note,) = info.value.__notes__
    assert note.startswith("Remote traceback:")
    assert "in fail" in note


async def test_other_errors_come_back_as_remote_error(counter: RpcProxy) -> None:
    with pytest.raises(RemoteError) as info:
        await counter.fail_custom()
    assert info.value.type_name == "tests.rpc.host.CustomError"
    assert info.value.message == "custom failure"
    assert "raise CustomError" in (info.value.remote_traceback or "")


async def test_the_principal_reaches_the_actor(host: FakeHost) -> None:
    async with create_test_client(host, "counter", "a", principal={"user": "ada"}) as counter:
        assert await counter.whoami() == {"user": "ada"}


async def test_an_unknown_binding_is_refused_with_its_own_error(host: FakeHost) -> None:
    async with create_test_client(host, "nope", "a") as missing:
        with pytest.raises(BindingNotFoundError) as info:
            await missing.anything()
    assert (info.value.code, info.value.status) == ("unknown_binding", 404)
    assert isinstance(info.value, LookupError)


# -- pipelining ----------------------------------------------------------------------------


async def test_a_pipelined_call_runs_once_in_one_round_trip(host: FakeHost) -> None:
    client, transport = counting_client(host)
    async with client as counter:
        x = counter.increment(10)
        y = counter.add(x, 1)
        z = counter.add(x, 2)
        assert await asyncio.gather(y, z) == [11, 12]
    assert actor(host).value == 10
    assert host.chains == ["increment(10)", "add(10, 1)", "add(10, 2)"]
    assert transport.calls_sent() == [3]
    sent = transport.requests[0].payload["calls"]
    assert [call.get("reply", True) for call in sent] == [False, True, True]
    assert sent[1]["chain"]["ops"][1]["args"][0] == {"$obj": ["rpc.ref", {"call": 0}]}


async def test_a_pipelined_result_stays_on_the_server(counter: RpcProxy) -> None:
    box = counter.opaque()  # an object the wire cannot carry
    assert await asyncio.gather(counter.read(box), counter.read(box)) == [0, 0]
    with pytest.raises(TypeError, match="cannot be sent back"):
        await box


async def test_awaiting_a_pipelined_call_too_runs_it_once(host: FakeHost) -> None:
    client, transport = counting_client(host)
    async with client as counter:
        x = counter.increment(5)
        y = counter.add(x, 1)
        assert await asyncio.gather(y, x) == [6, 5]
    assert host.chains == ["increment(5)", "add(5, 1)"]
    assert [call.get("reply", True) for call in transport.requests[0].payload["calls"]] == [
        True,
        True,
    ]


async def test_the_same_proxy_awaited_twice_in_a_tick_runs_once(host: FakeHost) -> None:
    client, transport = counting_client(host)
    async with client as counter:
        x = counter.increment()
        assert await asyncio.gather(x, x) == [1, 1]
    assert transport.calls_sent() == [1]


async def test_a_proxy_nested_in_one_call_runs_inside_that_call(host: FakeHost) -> None:
    client, transport = counting_client(host)
    async with client as counter:
        assert await counter.add(counter.increment(3), 4) == 7
    assert transport.calls_sent() == [1]
    assert host.chains == ["add(increment(3), 4)"]


async def test_a_five_call_pipeline_is_one_round_trip(host: FakeHost) -> None:
    client, transport = counting_client(host)
    async with client as counter:
        value = counter.increment()
        for step in range(4):
            value = counter.add(value, step)
        assert await value == 7
    assert transport.calls_sent() == [1]


async def test_a_failed_pipelined_call_fails_its_dependents_only(host: FakeHost) -> None:
    async with create_test_client(host, "counter", "a") as counter:
        x = counter.fail("upstream")
        results = await asyncio.gather(
            counter.add(x, 1), counter.add(x, 2), counter.increment(), return_exceptions=True
        )
    assert [type(r) for r in results] == [ValueError, ValueError, int]
    assert str(results[0]) == "upstream"
    assert actor(host).log == ["increment:1"]


# -- refusals and encoding failures inside a batch -----------------------------------------


async def test_a_refused_call_does_not_fail_its_neighbours(host: FakeHost) -> None:
    client, transport = counting_client(host)
    async with client as counter:
        results = await asyncio.gather(
            counter.increment(), counter._secret(), counter.increment(), return_exceptions=True
        )
    assert results[0] == 1
    assert results[2] == 2
    refused = results[1]
    assert isinstance(refused, ChainRefusedError)
    assert (refused.code, refused.status, refused.call_id) == ("chain_refused", 403, 1)
    # The refusal ran nothing; the neighbours were sent again without the refused call.
    assert transport.calls_sent() == [3, 2]


async def test_a_refused_pipelined_call_rejects_the_calls_that_need_it(host: FakeHost) -> None:
    async with create_test_client(host, "counter", "a") as counter:
        x = counter._secret()
        results = await asyncio.gather(
            counter.add(x, 1), counter.add(x, 2), counter.increment(), return_exceptions=True
        )
    assert isinstance(results[0], ChainRefusedError)
    assert "it needs call 0, which was refused" in str(results[0])
    assert isinstance(results[1], ChainRefusedError)
    assert results[2] == 1


async def test_an_argument_the_codec_cannot_encode_fails_only_its_call(host: FakeHost) -> None:
    client, transport = counting_client(host)
    async with client as counter:
        bad = counter.echo(object())
        results = await asyncio.gather(
            bad, counter.add(bad, 1), counter.increment(), return_exceptions=True
        )
    assert isinstance(results[0], UnsupportedTypeError)
    assert "$.ops[1].args[0]" in str(results[0])
    assert isinstance(results[1], UnsupportedTypeError)
    assert results[2] == 1
    assert transport.calls_sent() == [1]


async def test_a_batch_of_only_unencodable_calls_sends_nothing(host: FakeHost) -> None:
    client, transport = counting_client(host)
    async with client as counter:
        with pytest.raises(UnsupportedTypeError):
            await counter.echo(object())
        # A call that only feeds calls that cannot be encoded is not sent alone either.
        x = counter.increment()
        results = await asyncio.gather(
            counter.echo(x, object()), counter.echo(x, object()), return_exceptions=True
        )
        assert [type(r) for r in results] == [UnsupportedTypeError] * 2
    assert transport.requests == []


# -- timeouts and closing ------------------------------------------------------------------


async def test_a_call_without_an_answer_times_out(host: FakeHost) -> None:
    async with create_test_client(host, "counter", "a", timeout=0.01) as counter:
        with pytest.raises(RpcTimeoutError, match=r"`slow\(\)` got no answer within 0.01 s"):
            await counter.slow()
        assert isinstance(RpcTimeoutError("x"), TimeoutError)
        # Like a real server, the in-process one keeps running the call.
        assert host.chains == ["slow()"]
        actor(host).gate.set()


async def test_a_batch_whose_calls_all_timed_out_stops_waiting_on_the_transport() -> None:
    transport = HangingTransport()
    async with create_rpc_client("c", "a", transport=transport, timeout=0.01) as remote:
        with pytest.raises(RpcTimeoutError):
            await remote.anything()
        await transport.cancelled.wait()


async def test_batches_in_flight_each_time_out_at_their_own_deadline(host: FakeHost) -> None:
    client = create_test_client(host, "counter", "a", timeout=30)
    async with client as counter:
        patient = asyncio.ensure_future(counter.slow("patient"))
        await asyncio.sleep(0)  # its batch is made, with a 30 s deadline
        later = asyncio.ensure_future(counter.slow("later"))
        await asyncio.sleep(0)  # and this one's, a little later
        client.timeout = 0.01  # a batch made now has the earlier deadline
        hasty = asyncio.ensure_future(counter.slow("hasty"))
        await asyncio.sleep(0)
        client.timeout = None  # and one made now has none
        unhurried = asyncio.ensure_future(counter.slow("unhurried"))
        with pytest.raises(RpcTimeoutError, match=r"within 0\.01 s"):
            await hasty
        assert not patient.done()  # the watchdog waits on for the patient one
        actor(host).gate.set()
        assert await patient == "patient"
        assert await later == "later"
        assert await unhurried == "unhurried"


class LateTransport(Transport):
    """Keeps the answer callback of each request for the test to call when it likes."""

    def __init__(self) -> None:
        self.answers: list[Callable[[RpcResponse | Exception], None]] = []
        self.stopped = 0

    async def handle_async_request(self, request: RpcRequest) -> RpcResponse:
        raise AssertionError("the client starts requests with _start_request")

    async def _start_request(
        self, request: RpcRequest, on_answer: Callable[[RpcResponse | Exception], None]
    ) -> Callable[[], None]:
        self.answers.append(on_answer)

        def stop() -> None:
            self.stopped += 1

        return stop


async def test_an_answer_that_comes_after_the_timeout_is_ignored() -> None:
    transport = LateTransport()
    async with create_rpc_client("c", "a", transport=transport, timeout=0.01) as remote:
        with pytest.raises(RpcTimeoutError):
            await remote.anything()
        assert transport.stopped == 1  # the transport was told to stop waiting
        (answer,) = transport.answers
        answer(RpcResponse(200, {"results": [{"id": 0, "ok": 1}]}))  # nothing happens
        answer(TransportError("the connection dropped"))


async def test_an_answer_for_calls_sent_again_settles_them() -> None:
    transport = LateTransport()
    refusal = {
        "error": {
            "code": "chain_refused",
            "message": "no",
            "calls": [{"id": 0, "code": "chain_refused", "message": "no"}],
        }
    }
    async with create_rpc_client("c", "a", transport=transport) as remote:
        first, second = remote.refused(), remote.fine()
        both = asyncio.gather(first, second, return_exceptions=True)
        while not transport.answers:
            await asyncio.sleep(0)
        transport.answers[0](RpcResponse(403, refusal))
        while len(transport.answers) < 2:  # the fine call goes again, on its own
            await asyncio.sleep(0)
        transport.answers[0](RpcResponse(200, {"results": [{"id": 0, "ok": "stale"}]}))
        transport.answers[1](RpcResponse(200, {"results": [{"id": 0, "ok": "fine"}]}))
        refused, fine = await both
    assert isinstance(refused, ChainRefusedError)
    assert fine == "fine"


async def test_no_timeout_means_none(host: FakeHost) -> None:
    async with create_test_client(host, "counter", "a", timeout=None) as counter:
        assert await counter.increment() == 1


async def test_aclose_rejects_calls_in_flight(host: FakeHost) -> None:
    client, transport = counting_client(host)
    counter = client.proxy
    waiting = asyncio.ensure_future(counter.slow())
    queued = asyncio.ensure_future(counter.increment())
    while not host.chains:
        await asyncio.sleep(0)
    await client.aclose()
    for task in (waiting, queued):
        with pytest.raises(ClientClosedError, match="closed before the call was answered"):
            await task
    assert transport.closed
    assert client.closed
    await client.aclose()  # idempotent


async def test_a_closed_client_refuses_new_calls(host: FakeHost) -> None:
    client = create_test_client(host, "counter", "a")
    async with client as counter:
        pass
    with pytest.raises(ClientClosedError, match="the client is closed"):
        await counter.increment()
    with pytest.raises(ClientClosedError):
        async with client:
            pass


async def test_the_client_works_without_async_with(host: FakeHost) -> None:
    client = create_test_client(host, "counter", "a")
    assert await client.proxy.increment() == 1
    await client.aclose()


async def test_awaiting_the_proxy_itself_is_an_error(counter: RpcProxy) -> None:
    with pytest.raises(TypeError, match="not the proxy itself"):
        await counter


async def test_a_transport_error_rejects_every_call_of_its_batch() -> None:
    transport = ScriptedTransport(TransportError("network down"))
    async with create_rpc_client("c", "a", transport=transport) as remote:
        results = await asyncio.gather(remote.a(), remote.b(), return_exceptions=True)
    assert [str(r) for r in results] == ["network down", "network down"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"binding": ""}, "binding must be a non-empty string"),
        ({"instance": 3}, "instance must be a non-empty string"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"client_id": ""}, "client_id must be a non-empty string"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"binding": "c", "instance": "a", **options}
    transport = ScriptedTransport()
    with pytest.raises(ValueError, match=message):
        create_rpc_client(
            arguments.pop("binding"), arguments.pop("instance"), transport=transport, **arguments
        )


def test_the_transport_must_be_a_transport() -> None:
    with pytest.raises(TypeError, match="transport must be a Transport, not str"):
        create_rpc_client("c", "a", transport="http://x")  # type: ignore[arg-type]


def test_a_client_id_is_made_up_when_none_is_given() -> None:
    first = create_rpc_client("c", "a", transport=ScriptedTransport())
    second = create_rpc_client("c", "a", transport=ScriptedTransport(), client_id="tab-1")
    assert len(first.client_id) == 32
    assert second.client_id == "tab-1"
    assert (first.binding, first.instance, first.timeout) == ("c", "a", 30)


# -- answers that do not make sense --------------------------------------------------------


async def answer(*responses: RpcResponse, calls: int = 1) -> list[Any]:
    """Run ``calls`` calls in one batch against canned answers; their outcomes."""
    transport = ScriptedTransport(*responses)
    async with create_rpc_client("c", "a", transport=transport) as remote:
        return await asyncio.gather(*[remote.f(i) for i in range(calls)], return_exceptions=True)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"results": "no"}, "not a batch result"),
        ({"results": [], "extra": 1}, "not a batch result"),
        ({"results": [{"id": 0}]}, "malformed result"),
        ({"results": [{"id": "0", "ok": 1}]}, "malformed result"),
        ({"results": [{"id": 0, "ok": 1, "error": 2}]}, "malformed result"),
        ({"results": [[0, 1]]}, "malformed result"),
    ],
)
async def test_a_malformed_answer_is_a_transport_error(payload: Any, message: str) -> None:
    (result,) = await answer(RpcResponse(200, payload))
    assert isinstance(result, TransportError)
    assert message in str(result)


async def test_missing_and_unknown_results_are_handled() -> None:
    results = await answer(
        RpcResponse(200, {"results": [{"id": 1, "ok": "b"}, {"id": 7, "ok": "?"}]}), calls=2
    )
    assert isinstance(results[0], TransportError)
    assert "no result for call 0" in str(results[0])
    assert results[1] == "b"


async def test_an_error_that_is_not_an_exception_is_a_transport_error() -> None:
    (result,) = await answer(RpcResponse(200, {"results": [{"id": 0, "error": 5}]}))
    assert isinstance(result, TransportError)
    assert "non-exception error" in str(result)


async def test_a_result_this_side_cannot_decode_fails_its_call() -> None:
    body = {"results": [{"id": 0, "ok": {"$obj": ["unknown.Type", {}]}}]}
    (result,) = await answer(RpcResponse(200, body))
    assert type(result).__name__ == "DecodeError"


async def test_a_server_failure_is_a_transport_error() -> None:
    (result,) = await answer(RpcResponse(500, {"error": {"code": "internal_error"}}))
    assert isinstance(result, TransportError)
    assert "status 500" in str(result)


async def test_an_unreadable_refusal_is_a_transport_error() -> None:
    (result,) = await answer(RpcResponse(400, {"nope": 1}))
    assert isinstance(result, TransportError)
    assert "without a readable refusal" in str(result)


async def test_a_refusal_naming_unknown_calls_rejects_the_whole_batch() -> None:
    refusal = {
        "error": {"code": "x", "message": "m", "calls": [{"id": 9, "code": "x", "message": "m"}]}
    }
    results = await answer(RpcResponse(400, refusal), calls=2)
    assert [(type(r).__name__, r.code) for r in results] == [("RequestRejectedError", "x")] * 2


# -- downstream ----------------------------------------------------------------------------


async def test_on_downstream_receives_messages_for_its_client_id(host: FakeHost) -> None:
    received: list[DownstreamMessage] = []
    async with create_test_client(
        host, "counter", "a", client_id="tab-1", on_downstream=received.append
    ) as counter:
        await counter.notify(["tab-1", "tab-2"], {"n": 1})
        await counter.notify("tab-2", "not mine")
        await asyncio.sleep(0)  # delivered on the next tick, as from a socket
    assert received == [DownstreamMessage("counter", "a", ("tab-1",), {"n": 1})]
    assert host.listener_count == 0  # the server stopped listening with its last subscriber


async def test_a_coroutine_on_downstream_runs_as_a_task(host: FakeHost) -> None:
    received: asyncio.Queue[Any] = asyncio.Queue()

    async def handle(message: DownstreamMessage) -> None:
        await received.put(message.payload)

    async with create_test_client(host, "counter", "a", client_id="c", on_downstream=handle) as c:
        await c.notify("c", b"bytes survive the codec")
        assert await received.get() == b"bytes survive the codec"


async def test_an_exception_in_on_downstream_is_logged_and_delivery_goes_on(
    host: FakeHost, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[Any] = []

    def handle(message: DownstreamMessage) -> None:
        received.append(message.payload)
        if message.payload == "bad":
            raise RuntimeError("handler bug")

    async def handle_async(message: DownstreamMessage) -> None:
        raise RuntimeError("async handler bug")

    async with create_test_client(host, "counter", "a", client_id="c", on_downstream=handle) as c:
        await c.notify("c", "bad")
        await asyncio.sleep(0)
        await c.notify("c", "good")
        await asyncio.sleep(0)
    async with create_test_client(
        host, "counter", "a", client_id="d", on_downstream=handle_async
    ) as c:
        await c.notify("d", "x")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert received == ["bad", "good"]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == ["on_downstream raised for a message from counter/a", "on_downstream raised"]


async def test_a_message_from_a_call_that_failed_is_never_delivered(host: FakeHost) -> None:
    received: list[Any] = []
    async with create_test_client(
        host, "counter", "a", client_id="c", on_downstream=received.append
    ) as counter:
        with pytest.raises(RuntimeError, match="rolled back"):
            await counter.notify_then_fail("c")
        await counter.notify("c", "committed")
        await asyncio.sleep(0)
    assert [m.payload for m in received] == ["committed"]


async def test_a_transport_without_downstream_refuses_on_downstream() -> None:
    transport = HttpTransport("http://127.0.0.1:9/rpc")
    client = create_rpc_client("c", "a", transport=transport, on_downstream=print)
    with pytest.raises(TypeError, match="HttpTransport cannot deliver downstream messages"):
        async with client:
            pass
    assert client.closed


async def test_a_slow_subscription_times_out() -> None:
    class Stuck(ScriptedTransport):
        async def subscribe(self, client_id: str, listener: Callable[..., None]) -> Any:
            await asyncio.Event().wait()

    client = create_rpc_client("c", "a", transport=Stuck(), on_downstream=print, timeout=0.01)
    with pytest.raises(RpcTimeoutError, match="subscribing"):
        async with client:
            pass


async def test_a_failed_subscription_fails_the_first_batch_and_is_retried(host: FakeHost) -> None:
    class Flaky(CountingTransport):
        failures = 1

        async def subscribe(self, client_id: str, listener: Callable[..., None]) -> Any:
            if self.failures:
                self.failures -= 1
                raise TransportError("not yet")
            return await super().subscribe(client_id, listener)

    transport = Flaky(InProcessTransport(host))
    client = create_rpc_client("counter", "a", transport=transport, on_downstream=print)
    with pytest.raises(TransportError, match="not yet"):
        await client.proxy.increment()
    assert await client.proxy.increment() == 1
    await client.aclose()


def test_counter_is_a_plain_class() -> None:
    # The host keeps plain objects: nothing about rpc leaks into actor code.
    assert Counter("x").increment() == 1


# -- sending without a task ---------------------------------------------------------------


class ImmediateTransport(Transport):
    """Sends at once from the client's callback while ``ready`` (as an open WebSocket does),
    and answers later, from a task, with what an in-process server answered.

    Attributes:
        now: the requests sent at once, by ``_start_request_now``.
        waited: the requests sent by a task, through ``handle_async_request``.
        answer: whether to answer the requests sent at once.
        answer_now: an answer given before ``_start_request_now`` returns, if any.
        fail: an exception ``_start_request_now`` raises, if any.
    """

    def __init__(self, host: FakeHost) -> None:
        self.inner = InProcessTransport(host)
        self.ready = True
        self.answer = True
        self.answer_now: RpcResponse | None = None
        self.fail: Exception | None = None
        self.now: list[RpcRequest] = []
        self.waited: list[RpcRequest] = []
        self.stopped = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle_async_request(self, request: RpcRequest) -> RpcResponse:
        self.waited.append(request)
        return await self.inner.handle_async_request(request)

    def _start_request_now(
        self, request: RpcRequest, on_answer: Callable[[RpcResponse | Exception], None]
    ) -> Callable[[], None] | None:
        if self.fail is not None:
            raise self.fail
        if not self.ready:
            return None
        self.now.append(request)
        if self.answer_now is not None:
            on_answer(self.answer_now)
        elif self.answer:
            task = asyncio.ensure_future(self._answer(request, on_answer))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        def stop() -> None:
            self.stopped += 1

        return stop

    async def _answer(
        self, request: RpcRequest, on_answer: Callable[[RpcResponse | Exception], None]
    ) -> None:
        on_answer(await self.inner.handle_async_request(request))

    async def subscribe(self, client_id: str, listener: Callable[..., None]) -> Callable[[], None]:
        return await self.inner.subscribe(client_id, listener)

    async def aclose(self) -> None:
        await asyncio.gather(*self.tasks)
        await self.inner.aclose()


async def test_calls_of_one_tick_leave_at_once_as_one_batch_in_call_order(host: FakeHost) -> None:
    transport = ImmediateTransport(host)
    async with create_rpc_client("counter", "a", transport=transport) as counter:
        results = await asyncio.gather(
            counter.increment(1), counter.fail("no"), counter.increment(2), return_exceptions=True
        )
        assert await counter.increment(3) == 6
    assert [len(request.payload["calls"]) for request in transport.now] == [3, 1]
    assert transport.waited == []  # no task had to send anything
    assert results[0] == 1
    assert isinstance(results[1], ValueError)
    assert results[2] == 3
    assert actor(host).log == ["increment:1", "increment:2", "increment:3"]


async def test_a_batch_the_transport_cannot_send_at_once_goes_from_a_task(
    host: FakeHost,
) -> None:
    transport = ImmediateTransport(host)
    transport.ready = False  # connecting, say
    async with create_rpc_client("counter", "a", transport=transport) as counter:
        assert list(await asyncio.gather(counter.increment(), counter.increment())) == [1, 2]
        transport.ready = True
        assert await counter.increment() == 3
    assert [len(request.payload["calls"]) for request in transport.waited] == [2]
    assert [len(request.payload["calls"]) for request in transport.now] == [1]


async def test_the_first_batch_waits_for_the_subscription_then_batches_leave_at_once(
    host: FakeHost,
) -> None:
    transport = ImmediateTransport(host)
    received: list[DownstreamMessage] = []
    client = create_rpc_client(
        "counter", "a", transport=transport, client_id="c", on_downstream=received.append
    )
    counter = client.proxy  # without ``async with``: not subscribed yet
    assert await counter.notify("c", "hi") == "sent"
    assert await counter.increment() == 1
    await asyncio.sleep(0)  # the message comes on the tick after its frame
    await client.aclose()
    assert [message.payload for message in received] == ["hi"]
    assert [len(request.payload["calls"]) for request in transport.waited] == [1]
    assert [len(request.payload["calls"]) for request in transport.now] == [1]


async def test_a_call_cancelled_before_its_batch_leaves_at_once_is_not_sent(
    host: FakeHost,
) -> None:
    transport = ImmediateTransport(host)
    async with create_rpc_client("counter", "a", transport=transport) as counter:
        task = asyncio.ensure_future(counter.increment())
        await asyncio.sleep(0)  # the task has queued its call
        task.cancel()
        await asyncio.sleep(0)  # the batch found nothing left to send
        assert await counter.increment() == 1
    assert [len(request.payload["calls"]) for request in transport.now] == [1]


async def test_a_batch_sent_at_once_may_be_answered_before_the_transport_returns(
    host: FakeHost,
) -> None:
    transport = ImmediateTransport(host)
    transport.answer_now = RpcResponse(200, {"results": [{"id": 0, "ok": "early"}]})
    client = create_rpc_client("counter", "a", transport=transport)
    async with client as counter:
        assert await counter.anything() == "early"
        assert client._batches == {}
    assert transport.stopped == 0  # answered: nothing to stop


async def test_a_batch_of_only_unencodable_calls_sends_nothing_at_once(host: FakeHost) -> None:
    transport = ImmediateTransport(host)
    client = create_rpc_client("counter", "a", transport=transport)
    async with client as counter:
        with pytest.raises(UnsupportedTypeError):
            await counter.echo(object())
        assert client._batches == {}
    assert transport.now == []
    assert transport.waited == []


def test_a_transport_sends_nothing_at_once_unless_it_says_it_can() -> None:
    def never(answer: object) -> None:
        raise AssertionError("nothing was sent, so nothing is answered")

    request = RpcRequest("c", "a", {"v": 1, "calls": []})
    assert ScriptedTransport()._start_request_now(request, never) is None


async def test_a_transport_failing_to_send_at_once_fails_its_batch_only(host: FakeHost) -> None:
    transport = ImmediateTransport(host)
    client = create_rpc_client("counter", "a", transport=transport)
    async with client as counter:
        transport.fail = RuntimeError("transport bug")
        results = await asyncio.gather(counter.a(), counter.b(), return_exceptions=True)
        assert [str(result) for result in results] == ["transport bug", "transport bug"]
        assert client._batches == {}
        transport.fail = None
        assert await counter.increment() == 1


async def test_a_batch_sent_at_once_times_out_and_stops_waiting(host: FakeHost) -> None:
    transport = ImmediateTransport(host)
    transport.answer = False
    client = create_rpc_client("counter", "a", transport=transport, timeout=30)
    async with client as counter:
        call = asyncio.ensure_future(counter.increment())
        while not transport.now:
            await asyncio.sleep(0)
        (batch,) = client._batches
        batch.deadline = asyncio.get_running_loop().time()  # its 30 s are up
        client._check_deadlines()
        with pytest.raises(RpcTimeoutError, match=r"`increment\(\)` got no answer within 30 s"):
            await call
        assert transport.stopped == 1
        assert client._batches == {}


# -- races ---------------------------------------------------------------------------------


async def test_a_call_cancelled_before_its_batch_leaves_is_not_sent(host: FakeHost) -> None:
    client, transport = counting_client(host)
    async with client as counter:
        task = asyncio.ensure_future(counter.increment())
        await asyncio.sleep(0)  # the task has queued its call
        task.cancel()
        await asyncio.sleep(0)  # the batch task found nothing left to send
        assert await counter.increment() == 1
    assert transport.calls_sent() == [1]


async def test_an_awaiter_that_left_does_not_stop_the_others_of_its_call(host: FakeHost) -> None:
    async with create_test_client(host, "counter", "a") as counter:
        shared = counter.slow("v")
        leaving = asyncio.ensure_future(shared)
        staying = asyncio.ensure_future(shared)
        while not host.chains:
            await asyncio.sleep(0)
        leaving.cancel()
        actor(host).gate.set()
        assert await staying == "v"


async def test_batches_wait_for_one_shared_subscription(host: FakeHost) -> None:
    release = asyncio.Event()
    subscriptions = 0

    class Gated(CountingTransport):
        async def subscribe(self, client_id: str, listener: Callable[..., None]) -> Any:
            nonlocal subscriptions
            subscriptions += 1
            await release.wait()
            return await super().subscribe(client_id, listener)

    transport = Gated(InProcessTransport(host))
    client = create_rpc_client("counter", "a", transport=transport, on_downstream=print)
    first = asyncio.ensure_future(client.proxy.increment())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    second = asyncio.ensure_future(client.proxy.increment())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    release.set()
    assert sorted(await asyncio.gather(first, second)) == [1, 2]
    assert subscriptions == 1
    await client.aclose()


async def test_a_downstream_frame_that_cannot_be_decoded_is_dropped_and_logged(
    host: FakeHost, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[Any] = []
    async with create_test_client(
        host, "counter", "a", client_id="c", on_downstream=received.append
    ) as counter:
        host.send_downstream("counter", "a", ("c",), Picky.model_construct(n="not a number"))
        await asyncio.sleep(0)
        await counter.notify("c", "fine")
        await asyncio.sleep(0)
    assert [m.payload for m in received] == ["fine"]
    assert "could not be decoded" in caplog.text


@register_type(name="tests.rpc.Picky")
class Picky(BaseModel):
    """Encodes whatever it holds, but validates when decoded."""

    n: int


async def test_closing_right_after_a_call_was_cancelled(host: FakeHost) -> None:
    client = create_test_client(host, "counter", "a")
    task = asyncio.ensure_future(client.proxy.slow())
    while not host.chains:
        await asyncio.sleep(0)
    task.cancel()  # its future is cancelled now; the client learns of it a tick later
    await client.aclose()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failing_batch_skips_the_calls_that_already_settled() -> None:
    release = asyncio.Event()

    class Failing(ScriptedTransport):
        async def handle_async_request(self, request: RpcRequest) -> RpcResponse:
            await release.wait()
            raise TransportError("late failure")

    async with create_rpc_client("c", "a", transport=Failing()) as remote:
        leaving = asyncio.ensure_future(remote.a())
        staying = asyncio.ensure_future(remote.b())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        leaving.cancel()
        release.set()
        with pytest.raises(TransportError, match="late failure"):
            await staying
