"""The bouncer's HTTP API: a Starlette application around one ``Bouncer``.

Every answer, errors included, is JSON; an error has a machine-readable ``code`` and a
``message`` (see ``docs/bouncer.md``). No request, however malformed, stops the service.
"""

from __future__ import annotations

import hmac
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import httpx
import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._clock import Clock
from .._errors import InvalidArgumentError, StoreError, SystemClosedError
from .._options import RetryPolicy
from ._bouncer import DEFAULT_DELIVERY_RETRY, Bouncer
from ._errors import DelayOutOfRangeError, WaitNotFoundError, WaitStateError
from ._models import WaitRequest

logger = logging.getLogger("continuation.bouncer")

DEFAULT_MAX_BODY: Final = 64 * 1024
_MIN_TOKEN: Final = 16

Endpoint = Callable[[Request], Awaitable[Response]]


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra


def create_bouncer_app(
    database: str | os.PathLike[str],
    *,
    tokens: str | Sequence[str],
    signing_key: bytes | str,
    min_delay: float = 60.0,
    max_delay: float = 7200.0,
    callback_timeout: float = 900.0,
    give_up_after: float = 86400.0,
    retry: RetryPolicy = DEFAULT_DELIVERY_RETRY,
    clock: Clock | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    max_concurrent: int = 256,
    transport: httpx.AsyncBaseTransport | None = None,
    rng: random.Random | None = None,
) -> Starlette:
    """The bouncer as an ASGI application.

    Routes: ``POST /waits`` registers a wait, ``GET /waits/{id}`` shows one,
    ``DELETE /waits/{id}`` cancels one, each with ``Authorization: Bearer <token>``;
    ``GET /health`` answers without a token. The application's lifespan starts and stops
    the ``Bouncer`` (``app.state.bouncer``). Mounted inside another application, whose
    lifespan does not reach mounted apps, enter ``app.state.bouncer`` (an async context
    manager) in that application's own lifespan.

    Args:
        database: the SQLite file of the waits.
        tokens: the bearer tokens accepted (several, to rotate them); at least 16
            characters each.
        signing_key: the HMAC key callbacks are signed with, shared with the receivers.
        min_delay: the shortest wait accepted, in seconds.
        max_delay: the longest wait accepted, in seconds.
        callback_timeout: how long one callback may take, in seconds.
        give_up_after: how long past due a failing wait is retried before it is ``failed``.
        retry: backoff between callback attempts.
        clock: the bouncer's clock (a ``ManualClock`` stops the delivery loop; tests then
            call ``app.state.bouncer.drain()``).
        max_body: the largest request body accepted, in bytes.
        max_concurrent: most callbacks in flight at once.
        transport: the httpx transport of the callbacks (for tests).
        rng: randomness of the retry jitter.
    """
    accepted = _tokens(tokens)
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
        raise InvalidArgumentError(f"max_body must be a positive int, not {max_body!r}")
    bouncer = Bouncer(
        database,
        signing_key=signing_key,
        min_delay=min_delay,
        max_delay=max_delay,
        callback_timeout=callback_timeout,
        give_up_after=give_up_after,
        retry=retry,
        clock=clock,
        max_concurrent=max_concurrent,
        transport=transport,
        rng=rng,
    )

    def guarded(handler: Callable[[Request], Awaitable[tuple[int, bytes]]]) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            try:
                _authenticate(request, accepted)
                status, body = await handler(request)
            except _Refusal as refusal:
                return _refusal(refusal)
            except Exception:
                logger.exception("a request to the bouncer failed")
                return _error(500, "internal_error", "the bouncer failed; see its log")
            return Response(body, status, media_type="application/json")

        return endpoint

    async def register(request: Request) -> tuple[int, bytes]:
        body = await _read_body(request, max_body)
        try:
            wait_request = WaitRequest.model_validate_json(body)
        except ValidationError as exc:
            raise _invalid(exc) from None
        wait, created = await _call(bouncer.register(wait_request))
        return (201 if created else 200), wait.to_json()

    async def show(request: Request) -> tuple[int, bytes]:
        wait = await _call(bouncer.get(request.path_params["wait_id"]))
        return 200, wait.to_json()

    async def cancel(request: Request) -> tuple[int, bytes]:
        wait = await _call(bouncer.cancel(request.path_params["wait_id"]))
        return 200, wait.to_json()

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with bouncer:
            yield

    app = Starlette(
        routes=[
            Route("/waits", guarded(register), methods=["POST"]),
            Route("/waits/{wait_id}", guarded(show), methods=["GET"]),
            Route("/waits/{wait_id}", guarded(cancel), methods=["DELETE"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_exception},
        lifespan=lifespan,
    )
    app.state.bouncer = bouncer
    app.router.redirect_slashes = False
    return app


def _tokens(tokens: str | Sequence[str]) -> tuple[bytes, ...]:
    values = [tokens] if isinstance(tokens, str) else list(tokens)
    if not values:
        raise InvalidArgumentError("give at least one token")
    for token in values:
        if not isinstance(token, str):
            raise TypeError(f"tokens must be str, not {type(token).__name__}")
        if len(token) < _MIN_TOKEN or not token.isascii() or not token.isprintable():
            raise InvalidArgumentError(
                f"tokens must be at least {_MIN_TOKEN} printable ASCII characters"
            )
    return tuple(token.encode() for token in values)


def _authenticate(request: Request, accepted: tuple[bytes, ...]) -> None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    candidate = given.strip().encode("utf-8", "replace")
    matched = False
    for token in accepted:
        # Every token is compared, in constant time, so timing tells nothing about them.
        matched |= hmac.compare_digest(candidate, token)
    if scheme.lower() != "bearer" or not matched:
        raise _Refusal(401, "unauthenticated", "a valid 'Authorization: Bearer <token>' is needed")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _call(awaitable: Awaitable[Any]) -> Any:
    """Await a ``Bouncer`` method, turning its typed errors into refusals."""
    try:
        return await awaitable
    except DelayOutOfRangeError as exc:
        extra = {"min_delay": exc.min_delay, "max_delay": exc.max_delay}
        raise _Refusal(422, "delay_out_of_range", str(exc), **extra) from None
    except WaitNotFoundError as exc:
        raise _Refusal(404, "not_found", str(exc)) from None
    except WaitStateError as exc:
        raise _Refusal(409, "not_pending", str(exc)) from None
    except (StoreError, SystemClosedError) as exc:
        logger.error("the bouncer could not serve a request: %s", exc)
        raise _Refusal(503, "unavailable", "the bouncer cannot serve requests now") from None


def _invalid(exc: ValidationError) -> _Refusal:
    errors = [
        {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
        for error in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    where = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
        for error in errors
    )
    return _Refusal(422, "invalid_request", f"the wait is not valid: {where}", errors=errors)


def _too_large(limit: int) -> _Refusal:
    return _Refusal(413, "too_large", f"the body is larger than {limit} bytes")


def _refusal(refusal: _Refusal) -> Response:
    response = _error(refusal.status, refusal.code, str(refusal), **refusal.extra)
    if refusal.status == 401:
        response.headers["www-authenticate"] = "Bearer"
    return response


def _error(status: int, code: str, message: str, **extra: Any) -> Response:
    body = orjson.dumps({"code": code, "message": message, **extra})
    return Response(body, status, media_type="application/json")


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return _error(405, "method_not_allowed", f"{request.method} is not allowed here")
    return _error(exc.status_code, "not_found", f"nothing is served at {request.url.path}")
