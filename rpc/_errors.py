"""Exceptions of the ``rpc`` package.

Everything ``rpc`` raises on its own account derives from ``RpcError``, so a caller can catch
one type at the boundary. Exceptions raised by the actor's code are not wrapped: they come
back through the safe codec as their own builtin type where that is safe, else as
``operation_chain.RemoteError``. Errors from httpx and websockets are mapped at the transport
boundary (``raise TransportError(...) from exc``)::

    RpcError
    ├── TransportError                     the request could not be sent or its answer read
    │   └── ConnectionLostError            the connection dropped before the call was answered
    ├── RpcTimeoutError (TimeoutError)     no answer within the call's timeout
    ├── ClientClosedError                  the client was closed before the call was answered
    └── RequestRejectedError               the server refused the request; nothing in it ran
        ├── AuthenticationError            HTTP 401, or WebSocket close code 4401
        ├── BindingNotFoundError (LookupError)  the server has no actors of that binding
        └── ChainRefusedError              the policy refused a chain (a ``_`` name, a limit)

A ``RequestRejectedError`` carries the server's machine-readable ``code`` (``"chain_limit"``),
the HTTP ``status`` and, when one call of a batch was refused, that call's wire ``call_id``.
"""

from __future__ import annotations


class RpcError(Exception):
    """Root of every error raised by ``rpc`` itself."""


class TransportError(RpcError):
    """The request could not be sent, or the server's answer could not be read."""


class ConnectionLostError(TransportError):
    """The connection dropped while the call was in flight; it may or may not have run."""


class RpcTimeoutError(RpcError, TimeoutError):
    """The call got no answer within its timeout. It may still run on the server."""


class ClientClosedError(RpcError):
    """The client was closed (``aclose()`` or leaving ``async with``) before the call settled."""


class RequestRejectedError(RpcError):
    """The server refused the request before running any of it.

    Attributes:
        code: the machine-readable reason, e.g. ``"malformed_request"`` or ``"chain_limit"``.
        status: the HTTP status the server answered with (the same over WebSocket).
        call_id: the wire id of the refused call, when the refusal names one call of a batch.
    """

    def __init__(
        self, code: str, message: str, *, status: int = 400, call_id: int | None = None
    ) -> None:
        self.code = code
        self.status = status
        self.call_id = call_id
        super().__init__(f"{message} ({code})")


class AuthenticationError(RequestRejectedError):
    """The server's ``authenticate`` refused the request or the WebSocket connection."""


class BindingNotFoundError(RequestRejectedError, LookupError):
    """The server has no actors of the requested binding."""


class ChainRefusedError(RequestRejectedError):
    """The server's ``ExecutionPolicy`` refused a chain: a private name or a limit."""
