"""The RPC client: an awaitable proxy whose calls travel in batches over a transport.

Recording is ``OperationProxy``'s: ``client.rooms.get("a").post("hi")`` builds one chain and
sends nothing. ``await`` queues the chain; every chain awaited in the same event-loop tick
goes in one batch, sent on the next tick: by a callback when the transport can write at once
(an open WebSocket), else by a task. Each await settles on its own, with the call's value or
its error.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import uuid
import weakref
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any

from operation_chain import OperationProxy, chain_of

from ._answers import settle_answer, settle_error
from ._batch import PendingCall, Plan, plan_batch
from ._errors import ClientClosedError, RpcTimeoutError
from ._host import DownstreamMessage
from ._transports.base import AnswerCallback, RpcRequest, RpcResponse, Transport

logger = logging.getLogger("rpc.client")

DownstreamHandler = Callable[[DownstreamMessage], Any]
"""``on_downstream(message)``: a plain function, or a coroutine function (run as a task)."""

_USERS: weakref.WeakKeyDictionary[Transport, int] = weakref.WeakKeyDictionary()
"""How many open clients use each transport: the last one to close closes it."""


class RpcProxy(OperationProxy):
    """A recording proxy bound to an ``RpcClient``; awaiting it runs its chain remotely.

    Every attribute, subscription and call is recorded (``OperationProxy``), so the proxy has
    no methods of its own: use the ``RpcClient`` for ``aclose()`` and the client id.
    """

    __slots__ = ("_rpc_client",)

    _rpc_client: RpcClient  # set on the root proxy only: every step reads it from there
    _proxy_root: RpcProxy

    def __init__(self, client: RpcClient) -> None:
        super().__init__()
        self._rpc_client = client

    def __await__(self) -> Generator[Any, None, Any]:
        return self._proxy_root._rpc_client._submit(self).__await__()


class RpcClient:
    """A connection to one actor: ``async with`` it to get the proxy, ``aclose()`` to finish.

    Made by ``create_rpc_client``; the proxy is also available as ``client.proxy``. Closing
    rejects every call still in flight with ``ClientClosedError``, and closes the transport
    unless another open client still uses it.
    """

    def __init__(
        self,
        binding: str,
        instance: str,
        *,
        transport: Transport,
        on_downstream: DownstreamHandler | None = None,
        client_id: str | None = None,
        timeout: float | None = 30,
    ) -> None:
        for name, value in (("binding", binding), ("instance", instance)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, not {value!r}")
        if not isinstance(transport, Transport):
            raise TypeError(f"transport must be a Transport, not {type(transport).__name__}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, not {timeout!r}")
        if client_id is not None and (not isinstance(client_id, str) or not client_id):
            raise ValueError(f"client_id must be a non-empty string, not {client_id!r}")
        self.binding = binding
        self.instance = instance
        self.client_id = client_id if client_id is not None else uuid.uuid4().hex
        self.timeout = timeout
        self._transport = transport
        _USERS[transport] = _USERS.get(transport, 0) + 1
        self._on_downstream = on_downstream
        # Whether the transport may be able to send without waiting (``_start_request_now``):
        # then a batch leaves from a callback, and a task is made only when it must wait.
        self._sends_now = type(transport)._start_request_now is not Transport._start_request_now
        self._proxy = RpcProxy(self)
        self._queue: _Batch | None = None  # this tick's batch, until it is sent
        # Every batch until it is over, oldest (so earliest deadline) first: an ordered set.
        self._batches: dict[_Batch, None] = {}
        self._watchdog: asyncio.TimerHandle | None = None  # fires at the earliest deadline
        self._tasks: set[asyncio.Task[Any]] = set()
        self._opened = on_downstream is None
        self._opening: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False

    @property
    def proxy(self) -> RpcProxy:
        """The proxy whose awaited chains run against this client's actor."""
        return self._proxy

    @property
    def closed(self) -> bool:
        """Whether ``aclose()`` has been called."""
        return self._closed

    async def __aenter__(self) -> RpcProxy:
        if self._closed:
            raise ClientClosedError("the client is closed; create a new one")
        opened = False
        try:
            await self._open()
            opened = True
        finally:
            if not opened:
                await self.aclose()
        return self._proxy

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Reject the calls in flight with ``ClientClosedError``; close the transport if no
        other open client uses it."""
        if self._closed:
            return
        self._closed = True
        batches, self._batches = list(self._batches), {}
        for batch in batches:
            batch.stop_waiting()
            for call in batch.calls:
                settle_error(
                    call, ClientClosedError("the client was closed before the call was answered")
                )
        if self._watchdog is not None:
            self._watchdog.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._unsubscribe is not None:
            self._unsubscribe()
        users = _USERS[self._transport] - 1
        _USERS[self._transport] = users
        if not users:
            await self._transport.aclose()

    # -- calls -------------------------------------------------------------------------------

    def _submit(self, proxy: RpcProxy) -> asyncio.Future[Any]:
        """Queue the proxy's chain for this tick's batch; the future settles with its outcome."""
        if self._closed:
            raise ClientClosedError("the client is closed; create a new one")
        chain = chain_of(proxy)
        if not chain.ops:
            raise TypeError("await a call or attribute of the client proxy, not the proxy itself")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        batch = self._queue
        if batch is None:  # the first call of this tick starts its batch
            timeout = self.timeout
            deadline = None if timeout is None else loop.time() + timeout
            batch = self._queue = _Batch(timeout, deadline)
            self._batches[batch] = None
            if self._sends_now:
                loop.call_soon(self._flush, batch)
            else:
                batch.task = self._start_batch(self._send_queued(batch))
            if deadline is not None:
                watchdog = self._watchdog
                if watchdog is None or deadline < watchdog.when():  # None: the usual case
                    self._watch(deadline)
        batch.calls.append(PendingCall(chain, future))
        return future

    def _start(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start_batch(self, coroutine: Any) -> asyncio.Task[None]:
        """A task that sends a batch; unlike ``_start`` it leaves ``_tasks`` itself (in
        ``_send_queued`` or ``_wait_and_send``), which saves a callback per batch."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        return task

    def _flush(self, batch: _Batch) -> None:
        """Send the calls awaited in the tick before, from a callback (see ``_submit``).

        Sending from a callback rather than a task spares a task per batch, a noticeable
        share of a small call's round trip; a task takes over whenever sending has to wait
        (the downstream subscription, a connection being made, a full write buffer).
        """
        self._queue = None
        calls = [call for call in batch.calls if not call.future.done()]
        if not calls:  # every caller has stopped waiting already
            self._batches.pop(batch, None)
            return
        if not self._opened:
            batch.task = self._start_batch(self._send_queued(batch, calls))
            return
        try:
            sent = self._request(batch, calls)
            if sent is None:
                return
            request, on_answer, token = sent
            stop = self._transport._start_request_now(request, on_answer)
        except Exception as exc:  # a transport's fault; a task would settle the calls alike
            self._fail(batch, calls, exc)
            return
        if stop is None:
            batch.task = self._start_batch(self._wait_and_send(batch, calls, *sent))
        elif batch.request is token:  # not answered yet: the usual case
            batch.stop = stop

    async def _send_queued(self, batch: _Batch, calls: list[PendingCall] | None = None) -> None:
        """The batch task: send ``calls``, or else the calls awaited in the tick before the
        one it started on, those still waiting."""
        if calls is None:
            self._queue = None
            calls = [call for call in batch.calls if not call.future.done()]
        if not calls:  # every caller has stopped waiting already
            self._batches.pop(batch, None)
            self._tasks.discard(asyncio.current_task())
            return
        try:
            if not self._opened:
                await self._open()
            sent = self._request(batch, calls)
            if sent is not None:
                await self._send_request(batch, *sent)
        except Exception as exc:
            self._fail(batch, calls, exc)
        finally:
            self._tasks.discard(asyncio.current_task())

    async def _wait_and_send(
        self,
        batch: _Batch,
        calls: list[PendingCall],
        request: RpcRequest,
        on_answer: AnswerCallback,
        token: object,
    ) -> None:
        """The batch task for a request the transport could not send at once."""
        try:
            await self._send_request(batch, request, on_answer, token)
        except Exception as exc:
            self._fail(batch, calls, exc)
        finally:
            self._tasks.discard(asyncio.current_task())

    def _request(
        self, batch: _Batch, calls: list[PendingCall]
    ) -> tuple[RpcRequest, AnswerCallback, object] | None:
        """Plan ``calls`` as one request: the request, the callback that settles its calls
        (``_answered``) and its token; ``None`` when none of them can be sent."""
        plan = plan_batch(calls)
        for call, error in plan.failed:
            settle_error(call, error)
        if not plan.waiting:
            self._batches.pop(batch, None)
            return None
        request = RpcRequest(self.binding, self.instance, plan.payload)
        # A token for this request: the batch may have sent another (after a partial
        # refusal) by the time a late answer to this one comes, or the transport returns.
        token = batch.request = object()
        return request, functools.partial(self._answered, batch, plan, token), token

    async def _send_request(
        self, batch: _Batch, request: RpcRequest, on_answer: AnswerCallback, token: object
    ) -> None:
        """Send a request made by ``_request``; ``on_answer`` settles it when it comes."""
        stop = await self._transport._start_request(request, on_answer)
        if batch.request is token:  # not answered yet: the usual case over a WebSocket
            batch.stop = stop

    def _fail(self, batch: _Batch, calls: list[PendingCall], error: Exception) -> None:
        """Sending ``calls`` failed: settle them with ``error``; the batch is over."""
        for call in calls:
            settle_error(call, error)
        self._batches.pop(batch, None)

    def _answered(
        self, batch: _Batch, plan: Plan, token: object, answer: RpcResponse | Exception
    ) -> None:
        """Settle the calls of ``plan`` with the server's answer; send again those that a
        partial refusal did not concern. Called by the transport, so it must not raise."""
        if batch.request is not token or batch not in self._batches:
            return  # nobody waits: the batch timed out, or the client closed
        batch.request, batch.stop = None, _nothing
        try:
            again = settle_answer(plan, answer)
        except Exception as exc:  # the request failed, or its answer cannot be read
            again = []
            for group in plan.waiting.values():
                for call in group:
                    settle_error(call, exc)
        if again:
            batch.task = self._start_batch(self._send_queued(batch, again))
        else:
            del self._batches[batch]

    # -- timeouts ----------------------------------------------------------------------------

    def _watch(self, deadline: float) -> None:
        """Run the watchdog at ``deadline`` (instead of any later time it was due).

        One timer per client rather than one per batch: sequential calls would otherwise
        each schedule and cancel a timer. The watchdog expires the batches past their
        deadline, then waits for the earliest of the others.
        """
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = asyncio.get_running_loop().call_at(deadline, self._check_deadlines)

    def _check_deadlines(self) -> None:
        self._watchdog = None
        now = asyncio.get_running_loop().time()
        earliest: float | None = None
        for batch in list(self._batches):
            deadline = batch.deadline
            if deadline is None:  # made while the client had no timeout
                continue
            if deadline <= now:
                self._expire(batch)
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None:
            self._watch(earliest)

    def _expire(self, batch: _Batch) -> None:
        """The calls of ``batch`` are out of time: fail them and stop waiting for the answer."""
        del self._batches[batch]
        for call in batch.calls:
            settle_error(
                call, RpcTimeoutError(f"`{call.chain}` got no answer within {batch.timeout} s")
            )
        batch.stop_waiting()
        if batch.task is not None:
            batch.task.cancel()

    # -- downstream --------------------------------------------------------------------------

    async def _open(self) -> None:
        """Subscribe to downstream messages, once, before the first batch is sent."""
        if self._opened:
            return
        if self._opening is None or self._opening.done():
            self._opening = self._start(self._subscribe())
        await asyncio.shield(self._opening)

    async def _subscribe(self) -> None:
        try:
            self._unsubscribe = await asyncio.wait_for(
                self._transport.subscribe(self.client_id, self._deliver), self.timeout
            )
        except TimeoutError:
            raise RpcTimeoutError(
                f"subscribing {self.client_id!r} to downstream messages took over {self.timeout} s"
            ) from None
        self._opened = True

    def _deliver(self, message: DownstreamMessage) -> None:
        """Hand a downstream message to ``on_downstream``; its failures are only logged."""
        assert self._on_downstream is not None
        try:
            result = self._on_downstream(message)
            if inspect.isawaitable(result):
                self._start(_logged(result))
        except Exception:
            logger.exception(
                "on_downstream raised for a message from %s/%s", message.binding, message.instance
            )


def _nothing() -> None:
    """``_Batch.stop`` when no answer is awaited: nothing to stop."""


class _Batch:
    """The calls awaited in one tick, from the first ``await`` until all have settled.

    Attributes:
        timeout: the client's timeout when the batch was made.
        deadline: the loop time when its calls time out; ``None`` without a timeout.
        calls: the calls, in the order they were awaited.
        task: the task sending its request (or, after a partial refusal, sending again);
            ``None`` while no task was needed (the request left from a callback).
        request: a token for the request whose answer is awaited, if one is.
        stop: stops the transport waiting for that answer.
    """

    __slots__ = ("calls", "deadline", "request", "stop", "task", "timeout")

    def __init__(self, timeout: float | None, deadline: float | None) -> None:
        self.timeout = timeout
        self.deadline = deadline
        self.calls: list[PendingCall] = []
        self.task: asyncio.Task[None] | None = None
        self.request: object | None = None
        self.stop: Callable[[], None] = _nothing

    def stop_waiting(self) -> None:
        stop = self.stop
        self.request, self.stop = None, _nothing
        stop()


def create_rpc_client(
    binding: str,
    instance: str,
    *,
    transport: Transport,
    on_downstream: DownstreamHandler | None = None,
    client_id: str | None = None,
    timeout: float | None = 30,
) -> RpcClient:
    """A client for the actor ``binding``/``instance``; ``async with`` it to get its proxy.

    ```python
    async with create_rpc_client("counter", "a", transport=HttpTransport(url)) as counter:
        await counter.increment(2)
    ```

    Args:
        binding: the actor's binding on the server.
        instance: the actor's instance id.
        transport: how batches reach the server. Several clients (for different actors,
            say) may share one; the last of them to close closes it.
        on_downstream: called with each ``DownstreamMessage`` addressed to ``client_id``
            (a plain function or a coroutine function). Its exceptions are logged, never
            raised into the connection. Needs a transport with a channel back
            (``WebSocketTransport``, ``InProcessTransport``).
        client_id: the id actors address downstream messages to; a random one when ``None``
            (read it back as ``client.client_id``).
        timeout: seconds each call may wait for its answer before it raises
            ``RpcTimeoutError``; ``None`` waits forever.
    """
    return RpcClient(
        binding,
        instance,
        transport=transport,
        on_downstream=on_downstream,
        client_id=client_id,
        timeout=timeout,
    )


async def _logged(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("on_downstream raised")
