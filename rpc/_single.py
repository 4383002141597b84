"""One call sent on its own, outside a client's batching: for a runtime that forwards calls
to another host with an idempotency key (``continuation``'s remote calls)."""

from __future__ import annotations

import asyncio
from typing import Any

from operation_chain import OperationChain

from ._answers import settle_answer
from ._batch import PendingCall, plan_batch
from ._transports.base import RpcRequest, Transport


async def call_once(
    transport: Transport,
    binding: str,
    instance: str,
    chain: OperationChain,
    *,
    idempotency_key: str | None = None,
) -> Any:
    """Run ``chain`` on the actor ``binding``/``instance`` behind ``transport``, in a batch
    of its own, and return its value; raise as an awaited client call would (the actor's
    exception, a refusal, a transport failure).

    With ``idempotency_key``, a host that already answered a call under that key for the
    same actor answers from its store instead of running it again.
    """
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    plan = plan_batch([PendingCall(chain, future)])
    for _, error in plan.failed:
        raise error
    if idempotency_key is not None:
        plan.payload["calls"][0]["key"] = idempotency_key
    response = await transport.handle_async_request(RpcRequest(binding, instance, plan.payload))
    settle_answer(plan, response)
    return await future
