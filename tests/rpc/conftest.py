"""Fixtures for the rpc unit tests: a host with a counter, clients over the in-process
transport, and a transport wrapper that counts round trips."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from rpc import RpcProxy, RpcRequest, RpcResponse, Transport
from rpc.testing import create_test_client

from .host import Counter, FakeHost


class CountingTransport(Transport):
    """Wraps a transport and records every request it carries."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.requests: list[RpcRequest] = []
        self.closed = False

    async def handle_async_request(self, request: RpcRequest) -> RpcResponse:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    async def subscribe(self, client_id: str, listener: Callable[..., None]) -> Callable[[], None]:
        return await self.inner.subscribe(client_id, listener)

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()

    def calls_sent(self) -> list[int]:
        """How many calls each request carried."""
        return [len(request.payload["calls"]) for request in self.requests]


@pytest.fixture
def host() -> FakeHost:
    return FakeHost(counter=Counter)


@pytest.fixture
async def counter(host: FakeHost) -> AsyncIterator[RpcProxy]:
    async with create_test_client(host, "counter", "a") as proxy:
        yield proxy


def actor(host: FakeHost, instance: str = "a") -> Any:
    """The server-side counter object, for inspecting what ran."""
    return host.actor("counter", instance)
