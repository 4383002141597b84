"""Exceptions raised by ``continuation``; one root, ``ContinuationError``.

```
ContinuationError
├── InvalidArgumentError (ValueError)     a bad value given to a public entry point
│   ├── ContinuationOptionsError          wrong strategy or option combination
│   └── ContinuationChainError            a chain that does not fit the actor class
├── UnknownActorError (LookupError)       a binding or class not registered with the system
├── ContinuationNotFoundError (LookupError)
├── ContinuationStateError                retry/cancel of a continuation in the wrong status
├── ContinuationCancelled                 delivered to an error chain on cancellation
├── OutsideTurnError                      a turn-only action (a storage write) outside a turn
├── CommitError                           a turn's effects could not be committed
│   └── LeaseLostError                    the host lost the actor's lease during the turn
├── ActorUnavailableError                 the host holding an actor's lease cannot be reached
├── StoreError                            the database failed (wraps the driver's errors)
│   └── SchemaVersionError                the database was written by a newer version
├── SystemClosedError                     the ActorSystem is closed or not started
└── FetchError                            a proxy-fetch got no final response (in _fetch)
```

Exceptions raised by actor code are never wrapped: a call's caller sees them as raised.
"""

from __future__ import annotations


class ContinuationError(Exception):
    """Root of every exception ``continuation`` raises on its own account."""


class InvalidArgumentError(ContinuationError, ValueError):
    """A public entry point was given a value it cannot accept."""


class ContinuationOptionsError(InvalidArgumentError):
    """An unknown strategy, an unknown option, or options that do not go together."""


class ContinuationChainError(InvalidArgumentError):
    """A continuation chain does not fit its actor class (missing, private or async method,
    or arguments that do not bind to the signature)."""


class UnknownActorError(ContinuationError, LookupError):
    """No actor class is registered under that binding."""


class ContinuationNotFoundError(ContinuationError, LookupError):
    """No continuation has that id."""


class ContinuationStateError(ContinuationError):
    """The continuation is not in a status that allows the operation."""


class ContinuationCancelled(ContinuationError):
    """Injected at ``c.error`` when a continuation with an error chain is cancelled."""

    def __init__(self, continuation_id: str) -> None:
        super().__init__(f"continuation {continuation_id} was cancelled")
        self.continuation_id = continuation_id

    def __reduce__(self) -> tuple[type[ContinuationCancelled], tuple[str]]:
        return (type(self), (self.continuation_id,))


class OutsideTurnError(ContinuationError):
    """Something only a turn may do (write storage, continue, send downstream) was done
    outside one."""


class CommitError(ContinuationError):
    """A turn ran but its effects could not be made durable; none of them happened."""


class LeaseLostError(CommitError):
    """The turn ran under a lease on its actor that expired (the host stalled past it) or
    that another host took over; the database refused its effects."""


class ActorUnavailableError(ContinuationError):
    """The actor is leased by another host that could not be reached, and its lease did not
    expire in time for this host to take the actor over."""


class StoreError(ContinuationError):
    """The database failed; the original exception is the ``__cause__``."""


class SchemaVersionError(StoreError):
    """The database schema is newer than this version of the library understands."""


class SystemClosedError(ContinuationError):
    """The ``ActorSystem`` is not running (not entered yet, or closed)."""
