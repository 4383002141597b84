"""``HttpTransport``: one HTTP POST per batch, with httpx."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import httpx
import orjson

from .._errors import TransportError
from .base import RpcRequest, RpcResponse, Transport

_DEFAULT_TIMEOUT = httpx.Timeout(None, connect=10.0)
"""Only connecting is bounded here: how long a call may take is the client's ``timeout``."""


class HttpTransport(Transport):
    """Sends each batch as ``POST {url}/{binding}/{instance}``.

    Args:
        url: the server's RPC prefix, e.g. ``"http://127.0.0.1:8000/rpc"``.
        headers: sent with every request (an ``Authorization`` header, say).
        client: an ``httpx.AsyncClient`` to send with (its own transport, TLS settings or
            base headers); the transport then does not close it. By default the transport
            makes one and closes it in ``aclose()``.

    HTTP has no channel from the server back to the client, so it cannot deliver downstream
    messages; use ``WebSocketTransport`` for those.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a valid URL: {url!r} ({exc})") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"HttpTransport needs an http:// or https:// URL, not {url!r}")
        self.url = url.rstrip("/")
        self._headers = {"content-type": "application/json", **(headers or {})}
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=_DEFAULT_TIMEOUT)

    async def handle_async_request(self, request: RpcRequest) -> RpcResponse:
        url = f"{self.url}/{quote(request.binding, safe='')}/{quote(request.instance, safe='')}"
        try:
            response = await self._client.post(
                url, content=orjson.dumps(request.payload), headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise TransportError(f"POST {url} failed: {exc!r}") from exc
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise TransportError(
                f"POST {url} answered {response.status_code} with a body that is not JSON:"
                f" {response.text[:200]!r}"
            ) from exc
        if type(payload) is not dict:
            raise TransportError(
                f"POST {url} answered {response.status_code} with JSON that is not an object"
            )
        return RpcResponse(response.status_code, payload)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
