"""Exceptions of the ``operation_chain`` package.

Every error this package raises on its own account derives from one root, so callers can
catch ``OperationChainError`` at a boundary. Several also derive from the builtin they
refine, so ``except ValueError`` keeps working for code that does not know this package::

    OperationChainError
    ├── ChainValidationError                malformed chain data or JSON
    ├── ChainSecurityError                  refused by an ExecutionPolicy; nothing ran
    │   └── ChainLimitError                 over a configured limit (``51 > 50``)
    ├── MixedRootsError (ValueError)        proxies of two different roots in one chain
    ├── MarkerNotInjectedError              RESULT/ERROR reached execution without a value
    ├── AwaitableResultError (TypeError)    a synchronous execution produced an awaitable
    ├── CodecError
    │   ├── UnsupportedTypeError (TypeError)  a value the codec cannot encode, with its path
    │   ├── DecodeError                       malformed encoded data
    │   └── SignatureError (DecodeError)      a trusted blob failed its HMAC check, or a
    │                                         pickle blob reached a safe decoder
    └── RemoteError                         an exception from the other side of a boundary
                                            that could not be rebuilt as its own type

``ChainValidationError`` and ``DecodeError`` deliberately do not derive from ``ValueError``:
pydantic turns a ``ValueError`` raised inside validation into its own ``ValidationError``, and
a chain parsed through ``OperationChain.model_validate_json`` must still raise these types.

Exceptions raised by the target's own methods during execution are not wrapped: they
propagate unchanged, exactly as a direct call would raise them.
"""

from __future__ import annotations


class OperationChainError(Exception):
    """Root of every error raised by ``operation_chain`` itself."""


class ChainValidationError(OperationChainError):
    """Chain data (JSON or Python) does not describe a valid operation chain."""


class ChainSecurityError(OperationChainError):
    """An ``ExecutionPolicy`` refused a chain. No part of the chain ran."""


class ChainLimitError(ChainSecurityError):
    """A chain exceeds a configured limit; the message says by how much (``51 > 50``)."""


class MixedRootsError(OperationChainError, ValueError):
    """A proxy from one root was used inside a chain recorded on another root."""


class MarkerNotInjectedError(OperationChainError):
    """A ``RESULT`` or ``ERROR`` marker reached execution with no injected value."""


class AwaitableResultError(OperationChainError, TypeError):
    """A synchronous execution produced an awaitable, which it must not silently drop."""


class CodecError(OperationChainError):
    """Root of the value codec's errors."""


class UnsupportedTypeError(CodecError, TypeError):
    """A value has a type the codec cannot encode in the requested mode.

    Attributes:
        type_name: qualified name of the offending type.
        path: where the value was, written like ``$.args[1].when``.
    """

    def __init__(self, type_name: str, path: str, reason: str = "") -> None:
        self.type_name = type_name
        self.path = path
        detail = f": {reason}" if reason else ""
        super().__init__(f"cannot encode a value of type {type_name} at {path}{detail}")

    def __reduce__(self) -> tuple[type[UnsupportedTypeError], tuple[str, str]]:
        return (type(self), (self.type_name, self.path))


class DecodeError(CodecError):
    """Encoded data is malformed, uses an unknown tag, or names an unregistered type."""


class SignatureError(DecodeError):
    """A trusted pickle blob failed verification, or appeared where pickle is not allowed."""


class RemoteError(OperationChainError):
    """An exception raised on the other side of a boundary, rebuilt as a description.

    Used when the original type is not a builtin that is safe to rebuild and is not
    registered with the codec.

    Attributes:
        type_name: the qualified name of the original exception type.
        message: ``str()`` of the original exception.
        remote_traceback: the formatted traceback from the other side, or ``None`` when it
            was not sent (or was redacted).
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str | None = None) -> None:
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        super().__init__(type_name, message, remote_traceback)

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"
