"""The bouncer: waits on behalf of hosts that cannot keep a timer, then calls them back.

Run the service with ``python -m continuation bouncer --db waits.db ...`` or serve
``create_bouncer_app(...)``; let an ``ActorSystem`` use it with
``ActorSystem(..., timer=BouncerTimer(url, token=..., callback_url=..., signing_key=...))``;
check callbacks in any receiver with ``verify_signature``. See ``docs/bouncer.md``.
"""

from __future__ import annotations

from types import FunctionType as _FunctionType

from ._app import create_bouncer_app
from ._bouncer import Bouncer, callback_body
from ._errors import (
    BouncerError,
    BouncerRequestError,
    BouncerUnavailableError,
    DelayOutOfRangeError,
    SignatureError,
    StaleSignatureError,
    WaitNotFoundError,
    WaitStateError,
)
from ._models import WaitRequest
from ._records import Wait, WaitStatus
from ._signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify_signature
from ._timer import WAKE_PATH, BouncerTimer
from ._wake import create_wake_route

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WAKE_PATH",
    "Bouncer",
    "BouncerError",
    "BouncerRequestError",
    "BouncerTimer",
    "BouncerUnavailableError",
    "DelayOutOfRangeError",
    "SignatureError",
    "StaleSignatureError",
    "Wait",
    "WaitNotFoundError",
    "WaitRequest",
    "WaitStateError",
    "WaitStatus",
    "callback_body",
    "create_bouncer_app",
    "create_wake_route",
    "sign",
    "verify_signature",
]

# Users see ``continuation.bouncer.BouncerTimer``, not the private module it lives in.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type | _FunctionType) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
