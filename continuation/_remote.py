"""Remote calls to actors served by other hosts, through the RPC client's transports.

Each call carries an idempotency key (the continuation id), so a call sent again after a
restart or a lost answer is answered from the receiving host's store instead of running
twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from operation_chain import OperationChain
from rpc import HttpTransport, Transport, WebSocketTransport
from rpc._single import call_once

from ._errors import InvalidArgumentError
from ._work import Outcome, RemoteCall


class Remotes:
    """The hosts serving bindings that are not local, one transport per URL.

    Args:
        routes: binding to the URL of the host's RPC endpoint (``ws://``, ``wss://``,
            ``http://`` or ``https://``).
        headers: sent with every request (authentication, say).
    """

    def __init__(self, routes: Mapping[str, str], *, headers: Mapping[str, str] | None = None):
        for binding, url in routes.items():
            if not isinstance(binding, str) or not isinstance(url, str):
                raise TypeError("remotes must map binding names (str) to URLs (str)")
            if urlsplit(url).scheme not in ("ws", "wss", "http", "https"):
                raise InvalidArgumentError(
                    f"the remote URL for {binding!r} must be ws://, wss://, http:// or"
                    f" https://, not {url!r}"
                )
        self._routes = dict(routes)
        self._headers = dict(headers or {})
        self._transports: dict[str, Transport] = {}

    def __contains__(self, binding: object) -> bool:
        return binding in self._routes

    async def call(self, work: RemoteCall, *, key: str) -> Outcome:
        """Run ``work`` on its host; its value or exception (transport failures and the
        host's refusals included)."""
        try:
            value = await self.forward(
                self._routes[work.binding], work.binding, work.instance, work.call, key=key
            )
        except Exception as exc:
            return "error", exc
        return "ok", value

    async def forward(
        self, url: str, binding: str, instance: str, chain: OperationChain, *, key: str
    ) -> Any:
        """Run ``chain`` on the actor at the host serving RPC at ``url`` (another host
        sharing the database, say); return its value or raise as the host answered.

        Raises:
            rpc.TransportError: the host could not be reached, or the connection dropped.
        """
        return await call_once(self._transport(url), binding, instance, chain, idempotency_key=key)

    async def aclose(self) -> None:
        transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            await transport.aclose()

    def _transport(self, url: str) -> Transport:
        transport = self._transports.get(url)
        if transport is None:
            if url.startswith(("ws://", "wss://")):
                transport = WebSocketTransport(url, headers=self._headers)
            else:
                transport = HttpTransport(url, headers=self._headers)
            self._transports[url] = transport
        return transport
