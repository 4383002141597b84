"""Exceptions raised by ``continuation.bouncer``; they all derive from ``BouncerError``.

```
ContinuationError
└── BouncerError                          the bouncer service or its client failed
    ├── SignatureError                    a callback's signature does not verify
    │   └── StaleSignatureError           signed outside the replay window (or seen before)
    ├── DelayOutOfRangeError              a wait sooner than min_delay or later than max_delay
    │   (InvalidArgumentError)
    ├── WaitStateError                    cancelling a wait that is no longer pending
    ├── BouncerRequestError               the bouncer refused a request (HTTP 4xx or 5xx)
    ├── BouncerUnavailableError           the bouncer could not be reached (wraps httpx)
    └── WaitNotFoundError (LookupError)   no wait has that id
```
"""

from __future__ import annotations

from .._errors import ContinuationError, InvalidArgumentError


class BouncerError(ContinuationError):
    """Root of every exception ``continuation.bouncer`` raises on its own account."""


class SignatureError(BouncerError):
    """A callback's signature is missing, malformed, or does not match its body: refuse it."""


class StaleSignatureError(SignatureError):
    """A correctly signed callback whose timestamp is outside the replay window, or which
    was already accepted once: refuse it as a replay."""


class DelayOutOfRangeError(BouncerError, InvalidArgumentError):
    """A wait's delay (or its ``at`` minus now) is outside ``[min_delay, max_delay]``.

    Attributes:
        min_delay: the shortest wait the bouncer accepts, in seconds.
        max_delay: the longest, in seconds.
    """

    def __init__(self, message: str, *, min_delay: float, max_delay: float) -> None:
        super().__init__(message)
        self.min_delay = min_delay
        self.max_delay = max_delay


class WaitStateError(BouncerError):
    """The wait is not in a state that allows the operation (cancelling one that was
    delivered, failed, cancelled, or is being delivered right now)."""


class BouncerRequestError(BouncerError):
    """The bouncer answered a request with an error status.

    Attributes:
        status: the HTTP status code.
        code: the machine-readable ``code`` of the answer, when it had one.
    """

    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class BouncerUnavailableError(BouncerError):
    """The bouncer could not be reached; the httpx exception is the ``__cause__``."""


class WaitNotFoundError(BouncerError, LookupError):
    """No wait has that id."""
