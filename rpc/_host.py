"""The seam between the RPC server and whatever runs actors (``ActorSystem`` implements it).

``rpc`` may not import ``continuation`` (see DESIGN.md), so the server talks to actors through
this small protocol: is there such a binding, run a chain in an actor's turn, and tell me about
downstream messages once their turn has committed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from operation_chain import ExecutionPolicy, OperationChain


@dataclass(frozen=True, slots=True)
class DownstreamMessage:
    """A payload an actor sent to clients, released after the sending turn committed.

    Attributes:
        binding: the sending actor's binding.
        instance: the sending actor's instance id.
        client_ids: the clients it is addressed to.
        payload: any value the safe codec can encode.
    """

    binding: str
    instance: str
    client_ids: tuple[str, ...]
    payload: Any


DownstreamListener = Callable[[DownstreamMessage], None]
"""Called once per committed downstream message, on the event loop; must not block."""


@runtime_checkable
class ActorHost(Protocol):
    """What the RPC server needs from an actor runtime."""

    def has_binding(self, binding: str) -> bool:
        """Whether actors of ``binding`` can be called here."""
        ...

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
        """Run ``chain`` against the actor in one turn and return its value once durable.

        ``principal`` is what the server's ``authenticate`` returned; the actor sees it for
        the duration of the call. ``policy`` is enforced before any part of the chain runs.
        With ``idempotency_key``, a call the host already answered under the same key (for
        the same actor) is answered again with the stored outcome, without running.
        Exceptions raised by the actor's code propagate unchanged.
        """
        ...

    def add_downstream_listener(self, listener: DownstreamListener) -> Callable[[], None]:
        """Subscribe to committed downstream messages; returns a function that unsubscribes."""
        ...
