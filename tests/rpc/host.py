"""A small real ``ActorHost`` for the rpc tests, and the actors they call.

``FakeHost`` keeps one plain Python object per (binding, instance), runs each chain with
``execute_operation_chain_async`` under a per-instance lock (one turn at a time), shows the
caller's principal to the actor through ``current_principal``, and releases the downstream
messages a call sent only after the call returned: a call that raises sends nothing, as a
turn that does not commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from operation_chain import ExecutionPolicy, OperationChain, execute_operation_chain_async
from rpc import DownstreamMessage

current_principal: ContextVar[Any] = ContextVar("current_principal", default=None)
_outbox: ContextVar[list[tuple[tuple[str, ...], Any]]] = ContextVar("_outbox")


def send_downstream(client_ids: str | list[str], payload: Any) -> None:
    """For actor code: send ``payload`` to clients once the current call has returned."""
    ids = (client_ids,) if isinstance(client_ids, str) else tuple(client_ids)
    _outbox.get().append((ids, payload))


class FakeHost:
    """An in-memory ``ActorHost``: ``FakeHost(counter=Counter)`` serves ``Counter(instance)``.

    Attributes:
        actors: the live objects by (binding, instance).
        chains: the text of every chain run, in order, for tests that count server work.
    """

    def __init__(self, **bindings: Callable[[str], object]) -> None:
        self.bindings = bindings
        self.actors: dict[tuple[str, str], object] = {}
        self.chains: list[str] = []
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._listeners: list[Callable[[DownstreamMessage], None]] = []

    def has_binding(self, binding: str) -> bool:
        return binding in self.bindings

    def actor(self, binding: str, instance: str) -> Any:
        key = (binding, instance)
        if key not in self.actors:
            self.actors[key] = self.bindings[binding](instance)
        return self.actors[key]

    async def call(
        self,
        binding: str,
        instance: str,
        chain: OperationChain,
        *,
        principal: Any = None,
        policy: ExecutionPolicy | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        actor = self.actor(binding, instance)
        outbox: list[tuple[tuple[str, ...], Any]] = []
        async with self._locks.setdefault((binding, instance), asyncio.Lock()):
            self.chains.append(str(chain))
            principal_token = current_principal.set(principal)
            outbox_token = _outbox.set(outbox)
            try:
                result = await execute_operation_chain_async(actor, chain, policy=policy)
            finally:
                _outbox.reset(outbox_token)
                current_principal.reset(principal_token)
        for client_ids, payload in outbox:  # "committed": the call returned
            self.send_downstream(binding, instance, client_ids, payload)
        return result

    def add_downstream_listener(
        self, listener: Callable[[DownstreamMessage], None]
    ) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    def send_downstream(
        self, binding: str, instance: str, client_ids: tuple[str, ...], payload: Any
    ) -> None:
        message = DownstreamMessage(binding, instance, client_ids, payload)
        for listener in list(self._listeners):
            listener(message)


class Counter:
    """A counter with enough methods to show chaining, pipelining and errors."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.value = 0
        self.log: list[str] = []
        self.gate = asyncio.Event()

    def increment(self, by: int = 1) -> int:
        self.value += by
        self.log.append(f"increment:{by}")
        return self.value

    def add(self, a: int, b: int) -> int:
        self.log.append(f"add:{a}:{b}")
        return a + b

    def echo(self, *args: Any, **kwargs: Any) -> Any:
        return (args, kwargs) if kwargs else args

    def fail(self, message: str = "boom") -> None:
        raise ValueError(message)

    def fail_custom(self) -> None:
        raise CustomError("custom failure")

    def whoami(self) -> Any:
        return current_principal.get()

    def notify(self, client_ids: str | list[str], payload: Any) -> str:
        send_downstream(client_ids, payload)
        return "sent"

    def notify_then_fail(self, client_id: str) -> None:
        send_downstream(client_id, "never delivered")
        raise RuntimeError("rolled back")

    def opaque(self) -> object:
        """A result the safe codec cannot encode: fine on the server, not on the wire."""
        return Opaque(self.value)

    def read(self, box: Opaque) -> int:
        return box.value

    async def slow(self, value: Any = None) -> Any:
        await self.gate.wait()
        return value

    def task_name(self) -> str:
        """The name of the asyncio task running the call, for tests of where batches run."""
        task = asyncio.current_task()
        assert task is not None
        return task.get_name()

    @property
    def rooms(self) -> dict[str, Room]:
        return {"lobby": Room("lobby")}


class Room:
    def __init__(self, name: str) -> None:
        self.name = name

    def post(self, text: str) -> str:
        return f"{self.name}: {text}"


class Opaque:
    def __init__(self, value: int) -> None:
        self.value = value


class CustomError(Exception):
    """Not a builtin and not registered: it comes back as a RemoteError."""
