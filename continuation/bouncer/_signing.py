"""HMAC-SHA256 signatures of callbacks, and the check receivers run on them.

The bouncer signs ``f"{timestamp}.".encode() + body`` with the shared key and sends the
result as ``X-Bouncer-Signature: sha256=<hex>``, the timestamp (integer epoch seconds) as
``X-Bouncer-Timestamp``. Binding the timestamp into the signature lets a receiver refuse a
captured callback replayed later: ``verify_signature`` accepts it only within ``window``
seconds of its own clock.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final

from .._errors import InvalidArgumentError
from ._errors import SignatureError, StaleSignatureError

SIGNATURE_HEADER: Final = "X-Bouncer-Signature"
TIMESTAMP_HEADER: Final = "X-Bouncer-Timestamp"
_SCHEME: Final = "sha256="
_MIN_KEY: Final = 16


def signing_key_bytes(key: bytes | str) -> bytes:
    """``key`` as bytes (a str is UTF-8), refused when shorter than 16 bytes."""
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes):
        raise TypeError(f"signing_key must be bytes or str, not {type(key).__name__}")
    if len(key) < _MIN_KEY:
        raise InvalidArgumentError(f"signing_key must be at least {_MIN_KEY} bytes")
    return key


def sign(secret: bytes | str, timestamp: int | str, body: bytes) -> str:
    """The ``X-Bouncer-Signature`` value of ``body`` sent at ``timestamp``."""
    message = str(timestamp).encode() + b"." + body
    digest = hmac.new(signing_key_bytes(secret), message, hashlib.sha256).hexdigest()
    return _SCHEME + digest


def verify_signature(
    secret: bytes | str,
    timestamp: str | int | None,
    body: bytes,
    signature: str | None,
    *,
    now: float | None = None,
    window: float = 300.0,
) -> int:
    """Check a callback's signature and age; return its timestamp.

    Args:
        secret: the signing key shared with the bouncer.
        timestamp: the ``X-Bouncer-Timestamp`` header, as received.
        body: the raw request body, byte for byte (not re-encoded JSON).
        signature: the ``X-Bouncer-Signature`` header, as received.
        now: the receiver's time in epoch seconds (the real clock by default).
        window: how many seconds a signature stays acceptable, either side of ``now``.

    Raises:
        SignatureError: a header is missing or malformed, or the signature does not match
            (a forged or altered callback).
        StaleSignatureError: the signature matches but its timestamp is more than ``window``
            seconds away from ``now`` (a replay, or clocks far apart).
    """
    if timestamp is None or signature is None:
        raise SignatureError("the callback is not signed (a bouncer header is missing)")
    text = str(timestamp)
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise SignatureError(f"{TIMESTAMP_HEADER} must be integer epoch seconds")
    expected = sign(secret, text, body)
    # Compared in constant time, so the answer's timing tells nothing about the right value.
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        raise SignatureError("the callback's signature does not match its body")
    signed_at = int(text)
    current = time.time() if now is None else now
    age = current - signed_at
    if abs(age) > window:
        when = f"{age:.0f} s ago" if age > 0 else f"{-age:.0f} s in the future"
        raise StaleSignatureError(
            f"the callback was signed {when}, outside the {window:g} s window"
        )
    return signed_at
