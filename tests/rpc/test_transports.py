"""Transports on their own: HTTP error mapping and URLs, WebSocket options and backoff."""

from __future__ import annotations

import httpx
import pytest

from rpc import HttpTransport, RpcRequest, TransportError, WebSocketTransport
from rpc._transports.websocket import backoff_delay

REQUEST = RpcRequest("counter", "user/1 ü", {"v": 1, "calls": []})


def mocked(handler: httpx.MockTransport) -> HttpTransport:
    return HttpTransport("http://server/rpc/", client=httpx.AsyncClient(transport=handler))


async def test_http_posts_json_to_the_quoted_actor_path() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"results": []})

    transport = HttpTransport(
        "http://server/rpc/",
        headers={"authorization": "Bearer t"},
        client=httpx.AsyncClient(transport=httpx.MockTransport(answer)),
    )
    response = await transport.handle_async_request(REQUEST)
    assert (response.status, response.payload) == (200, {"results": []})
    (request,) = seen
    assert request.url.raw_path == b"/rpc/counter/user%2F1%20%C3%BC"
    assert request.headers["authorization"] == "Bearer t"
    assert request.headers["content-type"] == "application/json"
    assert request.content == b'{"v":1,"calls":[]}'


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(502, text="<html>bad gateway</html>"), "answered 502 with a body that"),
        (httpx.Response(200, json=[1]), "JSON that is not an object"),
    ],
)
async def test_http_answers_that_are_not_json_objects_are_transport_errors(
    response: httpx.Response, message: str
) -> None:
    transport = mocked(httpx.MockTransport(lambda request: response))
    with pytest.raises(TransportError, match=message):
        await transport.handle_async_request(REQUEST)


async def test_http_network_errors_are_mapped_at_the_boundary() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    transport = mocked(httpx.MockTransport(refuse))
    with pytest.raises(TransportError, match=r"POST http://server/rpc/counter/\S+ failed") as info:
        await transport.handle_async_request(REQUEST)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_http_closes_only_a_client_it_made() -> None:
    given = httpx.AsyncClient()
    await HttpTransport("http://x/rpc", client=given).aclose()
    assert not given.is_closed
    await given.aclose()
    own = HttpTransport("https://x/rpc")
    await own.aclose()
    assert own._client.is_closed


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ws://x/rpc", "needs an http:// or https:// URL"),
        ("ftp://x", "needs an http:// or https:// URL"),
        ("127.0.0.1:8000/rpc", "needs an http:// or https:// URL"),
        ("http://x:port/rpc", "not a valid URL"),
    ],
)
def test_http_needs_an_http_url(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HttpTransport(url)


@pytest.mark.parametrize("url", ["http://x/rpc", "x/rpc"])
def test_websocket_needs_a_ws_url(url: str) -> None:
    with pytest.raises(ValueError, match="needs a ws:// or wss:// URL"):
        WebSocketTransport(url)


@pytest.mark.parametrize(("base", "cap"), [(0, 1), (2, 1)])
def test_websocket_backoff_options_are_checked(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="0 < base <= max"):
        WebSocketTransport("ws://x/rpc", backoff_base=base, backoff_max=cap)


def test_backoff_grows_exponentially_up_to_the_cap_with_jitter() -> None:
    low = [backoff_delay(n, 0.1, 2.0, rand=lambda: 0.0) for n in range(7)]
    high = [backoff_delay(n, 0.1, 2.0, rand=lambda: 1.0) for n in range(7)]
    assert low == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert high == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    assert backoff_delay(10_000, 0.1, 2.0) <= 2.0
    assert 0.05 <= backoff_delay(0, 0.1, 2.0) <= 0.1
