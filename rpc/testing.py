"""Testing helpers: the real client, talking to an actor runtime in the same process."""

from __future__ import annotations

from typing import Any

from ._client import DownstreamHandler, RpcClient, create_rpc_client
from ._host import ActorHost
from ._transports.inprocess import InProcessTransport

__all__ = ["create_test_client"]


def create_test_client(
    system: ActorHost,
    binding: str,
    instance: str,
    *,
    principal: Any = None,
    on_downstream: DownstreamHandler | None = None,
    client_id: str | None = None,
    timeout: float | None = 30,
) -> RpcClient:
    """A client for one actor of ``system`` over ``InProcessTransport``: no sockets, but
    every request, answer and downstream message is encoded and decoded as on the wire, so a
    value the wire cannot carry fails here as it would in production.

    ```python
    async with create_test_client(system, "counter", "a") as counter:
        assert await counter.increment(2) == 2
    ```

    Args:
        system: the actor runtime (an ``ActorHost``).
        binding: the actor's binding.
        instance: the actor's instance id.
        principal: the principal the calls run with, as ``authenticate`` would return it.
        on_downstream: as for ``create_rpc_client``.
        client_id: as for ``create_rpc_client``.
        timeout: as for ``create_rpc_client``.
    """
    return create_rpc_client(
        binding,
        instance,
        transport=InProcessTransport(system, principal=principal),
        on_downstream=on_downstream,
        client_id=client_id,
        timeout=timeout,
    )
