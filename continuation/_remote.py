"""Remote calls to actors served by other hosts, through the RPC client's transports.

Each call carries an idempotency key (the continuation id), so a call sent again after a
restart or a lost answer is answered from the receiving host's store instead of running
twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

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
        transport = self._transport(work.binding)
        try:
            value = await call_once(
                transport, work.binding, work.instance, work.call, idempotency_key=key
            )
        except Exception as exc:
            return "error", exc
        return "ok", value

    async def aclose(self) -> None:
        transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            await transport.aclose()

    def _transport(self, binding: str) -> Transport:
        url = self._routes[binding]
        transport = self._transports.get(url)
        if transport is None:
            if url.startswith(("ws://", "wss://")):
                transport = WebSocketTransport(url, headers=self._headers)
            else:
                transport = HttpTransport(url, headers=self._headers)
            self._transports[url] = transport
        return transport
