"""The Starlette application: HTTP and WebSocket endpoints in front of ``RpcServer``.

Everything the endpoints answer, errors included, is JSON with a machine-readable ``code``:
Starlette's own 404 and 405 are turned into the same shape, so a client never has to parse
a plain-text error page.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from operation_chain import ExecutionPolicy

from ._host import ActorHost
from ._messages import (
    AUTH_CLOSE_CODE,
    INTERNAL_ERROR,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    UNAUTHENTICATED,
    refusal_body,
)
from ._server import Refused, RpcServer
from ._session import Session

logger = logging.getLogger("rpc.server")

Authenticate = Callable[[HTTPConnection], Any]
"""``authenticate(request_or_websocket)``: returns the principal (or an awaitable of it), or
raises to refuse."""

_MAX_CLOSE_REASON = 120  # a close frame's reason is limited to 123 bytes


def create_rpc_app(
    system: ActorHost,
    *,
    authenticate: Authenticate | None = None,
    prefix: str = "/rpc",
    redact_tracebacks: bool = False,
    policy: ExecutionPolicy | None = None,
) -> Starlette:
    """An ASGI application serving ``system``'s actors over HTTP and WebSocket.

    Routes: ``POST {prefix}/{binding}/{instance}`` runs one batch; a WebSocket at ``{prefix}``
    carries batches for any actor plus downstream messages. Serve it with uvicorn, or mount
    it in a Starlette or FastAPI application (``Mount("/api", app=rpc_app)``).

    Every request is validated before any of it runs; refusals are 4xx JSON answers with a
    machine-readable ``code`` (see ``docs/rpc.md``), and the server keeps serving.

    Args:
        system: the actor runtime, anything implementing ``ActorHost``.
        authenticate: called with the Starlette ``Request`` or ``WebSocket`` (once per
            connection); returns the principal passed to ``system.call``, or raises to refuse
            with HTTP 401 or WebSocket close code 4401. May be a coroutine function.
        prefix: the path the routes live under; ``""`` serves them at the root.
        redact_tracebacks: leave the server's traceback text out of errors sent to clients.
        policy: the ``ExecutionPolicy`` for every chain (default limits when ``None``); its
            ``max_encoded_size`` also bounds a request body or frame.

    Raises:
        TypeError: ``system`` is not an ``ActorHost``.
        ValueError: ``prefix`` does not start with ``/`` or ends with one.
    """
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ValueError(f"prefix must start with '/' and not end with one, not {prefix!r}")
    server = RpcServer(system, policy=policy, redact_tracebacks=redact_tracebacks)

    async def call_endpoint(request: Request) -> Response:
        return await _answer_http(server, authenticate, request)

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await _serve_websocket(server, authenticate, websocket)

    app = Starlette(
        routes=[
            Route(f"{prefix}/{{binding}}/{{instance:path}}", call_endpoint, methods=["POST"]),
            WebSocketRoute(prefix or "/", websocket_endpoint),
        ],
        exception_handlers={HTTPException: _http_exception},
    )
    app.state.rpc_server = server
    # A redirect answers no RPC: "/rpc/counter" is a 404, not a 307 to "/rpc/counter/".
    app.router.redirect_slashes = False
    return app


async def _authenticate(authenticate: Authenticate | None, connection: HTTPConnection) -> Any:
    if authenticate is None:
        return None
    try:
        principal = authenticate(connection)
        if inspect.isawaitable(principal):
            principal = await principal
    except Exception as exc:
        raise Refused(UNAUTHENTICATED, str(exc) or "authentication failed") from None
    return principal


async def _answer_http(
    server: RpcServer, authenticate: Authenticate | None, request: Request
) -> Response:
    binding, instance = request.path_params["binding"], request.path_params["instance"]
    try:
        if not instance:  # "{prefix}/{binding}/" matches the route with an empty instance
            raise Refused(NOT_FOUND, f"nothing is served at {request.url.path}; add an instance")
        principal = await _authenticate(authenticate, request)
        body = await _read_body(server, request)
        status, content = await server.handle_body(binding, instance, body, principal)
    except Refused as refusal:
        return _json(refusal.status, refusal.body())
    except Exception:
        logger.exception("an HTTP request failed inside the RPC server")
        return _json(500, refusal_body(INTERNAL_ERROR, "the server failed; see its log"))
    return Response(content, status, media_type="application/json")


async def _read_body(server: RpcServer, request: Request) -> bytes:
    """The body, refused as soon as it is known to be over the size limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        server.check_size(int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        server.check_size(size)
        chunks.append(chunk)
    return b"".join(chunks)


async def _serve_websocket(
    server: RpcServer, authenticate: Authenticate | None, websocket: WebSocket
) -> None:
    try:
        principal = await _authenticate(authenticate, websocket)
    except Refused as refusal:
        # Closing before accepting would answer the handshake with a bare 403; accepting
        # first lets the client read the close code and reason.
        await websocket.accept()
        await websocket.close(AUTH_CLOSE_CODE, refusal.message[:_MAX_CLOSE_REASON])
        return
    await websocket.accept()
    session = Session(server, principal, websocket.send_text, websocket.close)
    try:
        await session.serve(websocket.receive)
    finally:
        await session.aclose()


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405 (the only ones its routing raises), in the JSON shape of
    every other refusal."""
    error = cast(HTTPException, exc)  # registered for HTTPException only
    if error.status_code == 405:
        body = refusal_body(METHOD_NOT_ALLOWED, f"{request.method} is not allowed here; use POST")
    else:
        body = refusal_body(NOT_FOUND, f"nothing is served at {request.url.path}")
    return _json(error.status_code, body, error.headers)


def _json(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")
