"""The host's wake endpoint: the bouncer's signed callback runs what is due.

A callback whose signature does not verify, is outside the replay window, or was already
accepted is refused with 401 before anything runs. A verified one runs everything due while
the bouncer holds the connection open, then answers 200; if running failed, 500, so that the
bouncer calls again later.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._errors import InvalidArgumentError
from ._errors import SignatureError, StaleSignatureError
from ._signing import SIGNATURE_HEADER, TIMESTAMP_HEADER
from ._timer import WAKE_PATH, BouncerTimer

if TYPE_CHECKING:
    from .._system import ActorSystem

logger = logging.getLogger("continuation.bouncer")

MAX_WAKE_BODY: Final = 256 * 1024


def create_wake_route(system: ActorSystem, path: str = WAKE_PATH) -> Route:
    """A Starlette ``Route`` serving ``system``'s wake endpoint at ``path`` (``POST``).

    Add it to your application's routes; the bouncer's ``callback`` (the timer's
    ``callback_url``) must point at it. ``python -m continuation serve`` adds it for you.

    Raises:
        InvalidArgumentError: ``system`` has no ``BouncerTimer``.
    """
    timer = _timer_of(system)

    async def wake(request: Request) -> Response:
        return await answer_wake(timer, request)

    return Route(path, wake, methods=["POST"])


async def answer_wake(timer: BouncerTimer, request: Request) -> Response:
    """Verify the callback in ``request`` and, if it holds, wake the system."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_WAKE_BODY:
            return _answer(413, {"code": "too_large", "message": "the body is too large"})
    try:
        timer.check_signature(
            request.headers.get(TIMESTAMP_HEADER), body, request.headers.get(SIGNATURE_HEADER)
        )
    except StaleSignatureError as exc:
        logger.warning("refused a replayed or stale wake-up: %s", exc)
        return _answer(401, {"code": "replayed", "message": str(exc)})
    except SignatureError as exc:
        logger.warning("refused a wake-up with a bad signature: %s", exc)
        return _answer(401, {"code": "bad_signature", "message": str(exc)})
    try:
        due = await timer.wake()
    except Exception:
        logger.exception("running what is due failed; the bouncer will call again")
        return _answer(500, {"code": "wake_failed", "message": "running what is due failed"})
    return _answer(200, {"woke": True, "next_due": due})


def with_wake_endpoint(app: Any, system: ActorSystem, path: str = WAKE_PATH) -> Any:
    """``app`` with ``system``'s wake endpoint in front of it, at ``path``."""
    timer = _timer_of(system)

    async def dispatch(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != path:
            await app(scope, receive, send)
            return
        request = Request(scope, receive)
        if request.method == "POST":
            response = await answer_wake(timer, request)
        else:
            message = f"{request.method} is not allowed here; the bouncer POSTs"
            response = _answer(405, {"code": "method_not_allowed", "message": message})
        await response(scope, receive, send)

    return dispatch


def _timer_of(system: ActorSystem) -> BouncerTimer:
    timer = system.timer
    if not isinstance(timer, BouncerTimer):
        raise InvalidArgumentError("the system has no BouncerTimer: ActorSystem(timer=...)")
    return timer


def _answer(status: int, content: dict[str, Any]) -> Response:
    return Response(orjson.dumps(content), status, media_type="application/json")
