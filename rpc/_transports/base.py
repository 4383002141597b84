"""The transport seam: one method to send a batch and return the server's answer.

Like httpx's ``AsyncBaseTransport.handle_async_request``, a transport knows nothing about
chains or proxies: the client hands it a JSON-compatible envelope for one actor and gets back
the status and body the server answered with. Downstream delivery and closing are optional
extras with defaults, so a test double needs one method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._host import DownstreamListener


@dataclass(frozen=True, slots=True)
class RpcRequest:
    """One batch for one actor.

    Attributes:
        binding: the actor's binding.
        instance: the actor's instance id.
        payload: the batch envelope (see ``rpc._messages``), a JSON-compatible tree.
    """

    binding: str
    instance: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RpcResponse:
    """The server's answer to one ``RpcRequest``.

    Attributes:
        status: 200 for an answer, 4xx for a refusal (HTTP statuses, over any transport).
        payload: the parsed JSON body: ``{"results": [...]}`` or ``{"error": {...}}``.
    """

    status: int
    payload: dict[str, Any]


AnswerCallback = Callable[[RpcResponse | Exception], None]
"""Receives the server's answer to a request, or the error that replaced it."""


def _nothing() -> None:
    """A request that is over already needs no stopping."""


class Transport(ABC):
    """Carries batches to an RPC server. Subclasses implement ``handle_async_request``.

    A transport may be used by several clients at once; requests must not block each other.
    """

    @abstractmethod
    async def handle_async_request(self, request: RpcRequest) -> RpcResponse:
        """Send one batch and return the server's answer.

        Raises:
            TransportError: the request could not be sent or its answer could not be read
                (``ConnectionLostError`` when it was sent and the connection then dropped).
        """

    async def _start_request(
        self, request: RpcRequest, on_answer: AnswerCallback
    ) -> Callable[[], None]:
        """Send one batch and call ``on_answer`` once with the answer (or the exception that
        ``handle_async_request`` would raise); return a function that stops waiting for it.

        What ``RpcClient`` uses. This default returns only once ``on_answer`` has been called;
        a transport that reads answers in a callback of its own returns once the request is
        sent and calls ``on_answer`` from there, which spares the client a task switch on
        every answer. ``on_answer`` must not raise.
        """
        try:
            response = await self.handle_async_request(request)
        except Exception as exc:
            on_answer(exc)
        else:
            on_answer(response)
        return _nothing

    def _start_request_now(
        self, request: RpcRequest, on_answer: AnswerCallback
    ) -> Callable[[], None] | None:
        """Send one batch at once, without waiting, if the transport can; else ``None``,
        having sent nothing, and the client then calls ``_start_request`` from a task.

        What ``RpcClient`` tries first, from a callback, when a transport overrides it: a
        batch so leaves without a task of its own. Returns what ``_start_request`` returns;
        ``on_answer`` is called later, as there. This default never can.
        """
        return None

    async def subscribe(self, client_id: str, listener: DownstreamListener) -> Callable[[], None]:
        """Deliver the downstream messages addressed to ``client_id`` to ``listener``.

        Returns a function that ends the subscription. Transports without a channel from the
        server to the client refuse.

        Raises:
            TypeError: this transport cannot deliver downstream messages.
        """
        raise TypeError(
            f"{type(self).__name__} cannot deliver downstream messages; use"
            " WebSocketTransport (or InProcessTransport in tests) with on_downstream"
        )

    async def aclose(self) -> None:  # noqa: B027 - optional hook: most transports hold nothing
        """Release connections. The client that owns the transport calls this when it closes."""
