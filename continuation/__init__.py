"""Actors with durable continuations: schedule what to do next, survive any crash.

```python
from continuation import Actor, ActorSystem, Continuation

class Reminder(Actor):
    def remind(self, text: str) -> str:
        c = Continuation(self)
        return self.continue_(c.deliver(text, c.result), strategy="alarm", delay=60)

    def deliver(self, text: str, fired) -> None:
        self.storage.put("last", text)
```

See ``docs/continuations.md`` for turns, strategies, retries, cancellation and inspection,
and ``docs/testing.md`` for the manual clock.
"""

from __future__ import annotations

from types import FunctionType as _FunctionType

from ._actor import Actor
from ._clock import Clock, ManualClock, SystemClock
from ._continuation import Continuation
from ._errors import (
    ActorUnavailableError,
    CommitError,
    ContinuationCancelled,
    ContinuationChainError,
    ContinuationError,
    ContinuationNotFoundError,
    ContinuationOptionsError,
    ContinuationStateError,
    InvalidArgumentError,
    LeaseLostError,
    OutsideTurnError,
    SchemaVersionError,
    StoreError,
    SystemClosedError,
    UnknownActorError,
)
from ._fetch import FetchError, FetchRequest, FetchResponse
from ._options import AlarmOptions, RetryPolicy
from ._records import AlarmInfo, AuditEvent, ContinuationInfo, ContinuationStatus
from ._ref import ActorRef
from ._storage import ActorStorage
from ._strategy_options import ProxyFetchOptions, RemoteCallOptions, SignalOptions
from ._system import ActorSystem
from .bouncer import BouncerTimer

__all__ = [
    "Actor",
    "ActorRef",
    "ActorStorage",
    "ActorSystem",
    "ActorUnavailableError",
    "AlarmInfo",
    "AlarmOptions",
    "AuditEvent",
    "BouncerTimer",
    "Clock",
    "CommitError",
    "Continuation",
    "ContinuationCancelled",
    "ContinuationChainError",
    "ContinuationError",
    "ContinuationInfo",
    "ContinuationNotFoundError",
    "ContinuationOptionsError",
    "ContinuationStateError",
    "ContinuationStatus",
    "FetchError",
    "FetchRequest",
    "FetchResponse",
    "InvalidArgumentError",
    "LeaseLostError",
    "ManualClock",
    "OutsideTurnError",
    "ProxyFetchOptions",
    "RemoteCallOptions",
    "RetryPolicy",
    "SchemaVersionError",
    "SignalOptions",
    "StoreError",
    "SystemClock",
    "SystemClosedError",
    "UnknownActorError",
]

# Users see ``continuation.ActorSystem``, not the private module it lives in.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type | _FunctionType) and _obj.__module__.startswith("continuation._"):
        _obj.__module__ = __name__
del _name, _obj
