"""The RPC client: an awaitable proxy whose calls travel in batches over a transport.

Recording is ``OperationProxy``'s: ``client.rooms.get("a").post("hi")`` builds one chain and
sends nothing. ``await`` queues the chain; every chain awaited in the same event-loop tick
goes in one batch, sent by a task that starts on the next tick. Each await settles on its
own, with the call's value or its error.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
import weakref
from collections.abc import Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from operation_chain import Operation, OperationProxy, chain_of

from ._answers import settle_error, settle_refusal, settle_results
from ._batch import PendingCall, plan_batch
from ._errors import ClientClosedError, RpcTimeoutError, TransportError
from ._host import DownstreamMessage
from ._transports.base import RpcRequest, Transport

if TYPE_CHECKING:
    from typing import Self

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

    _rpc_client: RpcClient

    def __init__(self, client: RpcClient) -> None:
        super().__init__()
        self._rpc_client = client

    def _proxy_derive(self, op: Operation) -> Self:
        child = super()._proxy_derive(op)
        child._rpc_client = self._rpc_client
        return child

    def __await__(self) -> Generator[Any, None, Any]:
        return self._rpc_client._submit(self).__await__()


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
        self._proxy = RpcProxy(self)
        self._queue: list[PendingCall] | None = None  # this tick's calls, until their batch starts
        self._batches: dict[int, list[PendingCall]] = {}  # every tick's calls, until all settle
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
        for calls in list(self._batches.values()):
            for call in calls:
                settle_error(
                    call, ClientClosedError("the client was closed before the call was answered")
                )
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
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        queue = self._queue
        if queue is None:  # the first call of this tick starts its batch task
            queue = self._queue = []
            self._batches[id(queue)] = queue
            self._start(self._send_queued(queue))
        queue.append(PendingCall(chain, future))
        return future

    def _start(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send_queued(self, tick: list[PendingCall]) -> None:
        """The batch task, started on the tick after its first call: send the calls awaited
        in that tick and settle each. One timer serves them all: they share a deadline."""
        self._queue = None
        timer = None
        if self.timeout is not None:
            task = cast("asyncio.Task[None]", asyncio.current_task())
            timer = asyncio.get_running_loop().call_later(self.timeout, self._expire, tick, task)
        calls = [call for call in tick if not call.future.done()]
        try:
            if calls:
                await self._open()
            while calls:
                calls = await self._send(calls)
        except Exception as exc:
            for call in calls:
                settle_error(call, exc)
        finally:
            if timer is not None:
                timer.cancel()
            del self._batches[id(tick)]

    def _expire(self, tick: list[PendingCall], task: asyncio.Task[None]) -> None:
        """The calls of ``tick`` are out of time: fail them and stop waiting for the answer."""
        for call in tick:
            settle_error(
                call, RpcTimeoutError(f"`{call.chain}` got no answer within {self.timeout} s")
            )
        task.cancel()

    async def _send(self, calls: list[PendingCall]) -> list[PendingCall]:
        """Send one batch; returns the calls to send again after a partial refusal."""
        plan = plan_batch(calls)
        for call, error in plan.failed:
            settle_error(call, error)
        if not plan.waiting:
            return []
        request = RpcRequest(self.binding, self.instance, plan.payload)
        response = await self._transport.handle_async_request(request)
        if response.status >= 500:
            raise TransportError(
                f"the server failed with status {response.status}: {str(response.payload)[:200]}"
            )
        if response.status == 200:
            settle_results(plan, response)
            return []
        return settle_refusal(plan, response)

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
