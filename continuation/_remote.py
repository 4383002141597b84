"""Remote calls to actors served by other hosts, through the RPC client's transports.

Each call carries an idempotency key (the continuation id), so a call sent again after a
restart or a lost answer is answered from the receiving host's store instead of running
twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from operation_chain import decode
from rpc import HttpTransport, RpcRequest, Transport, TransportError, WebSocketTransport
from rpc._batch import chain_form
from rpc._messages import WIRE_VERSION

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
        """Run ``work`` on its host; its value or exception (transport failures included)."""
        payload = {
            "v": WIRE_VERSION,
            "calls": [{"id": 0, "chain": chain_form(work.call), "key": key}],
        }
        request = RpcRequest(work.binding, work.instance, payload)
        try:
            response = await self._transport(work.binding).handle_async_request(request)
            if response.status != 200:
                error = response.payload.get("error", {})
                raise TransportError(
                    f"the host of {work.binding!r} refused the call with status"
                    f" {response.status}: {error.get('message', error)}"
                )
            (result,) = response.payload["results"]
            if "ok" in result:
                return "ok", decode(result["ok"])
            error = decode(result["error"])
        except Exception as exc:
            return "error", exc
        if isinstance(error, BaseException):
            return "error", error
        return "error", TransportError(f"the host sent a non-exception error: {error!r}")

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
