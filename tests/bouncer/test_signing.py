"""Callback signatures: what the bouncer signs verifies; anything forged, altered or replayed
is refused with a typed error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from continuation import InvalidArgumentError
from continuation.bouncer import (
    BouncerError,
    SignatureError,
    StaleSignatureError,
    sign,
    verify_signature,
)

KEY = b"k" * 32
NOW = 1_800_000_000
BODY = b'{"id":"w1","due_at":1800000000.0,"payload":{"n":1}}'


def test_a_signed_body_verifies_and_returns_its_timestamp() -> None:
    signature = sign(KEY, NOW, BODY)
    assert signature.startswith("sha256=")
    assert verify_signature(KEY, str(NOW), BODY, signature, now=NOW + 10) == NOW


def test_a_str_key_is_its_utf8_bytes() -> None:
    assert sign("k" * 32, NOW, BODY) == sign(KEY, NOW, BODY)


def test_the_real_clock_is_the_default_now() -> None:
    import time

    stamp = int(time.time())
    assert verify_signature(KEY, stamp, BODY, sign(KEY, stamp, BODY)) == stamp


@pytest.mark.parametrize(
    ("key", "timestamp", "body"),
    [
        (b"x" * 32, str(NOW), BODY),  # forged: another key
        (KEY, str(NOW + 1), BODY),  # the timestamp was altered
        (KEY, str(NOW), BODY + b" "),  # the body was altered
    ],
)
def test_a_forged_or_altered_callback_is_refused(key: bytes, timestamp: str, body: bytes) -> None:
    signature = sign(key, NOW, BODY)
    with pytest.raises(SignatureError, match="does not match") as info:
        verify_signature(KEY, timestamp, body, signature, now=NOW)
    assert not isinstance(info.value, StaleSignatureError)
    assert isinstance(info.value, BouncerError)


@pytest.mark.parametrize(
    ("timestamp", "signature", "match"),
    [
        (None, "sha256=00", "not signed"),
        (str(NOW), None, "not signed"),
        ("abc", "sha256=00", "integer epoch seconds"),
        ("-5", "sha256=00", "integer epoch seconds"),
        ("1.8e9", "sha256=00", "integer epoch seconds"),
        ("٣٣", "sha256=00", "integer epoch seconds"),  # digits, but not ASCII ones
        ("1" * 13, "sha256=00", "integer epoch seconds"),
        (str(NOW), "sha256=zz", "does not match"),
        (str(NOW), "sha256=\u00e9\udcff", "does not match"),
        (str(NOW), "", "does not match"),
    ],
)
def test_a_malformed_signature_is_refused(
    timestamp: str | None, signature: str | None, match: str
) -> None:
    with pytest.raises(SignatureError, match=match):
        verify_signature(KEY, timestamp, BODY, signature, now=NOW)


@pytest.mark.parametrize("offset", [-301, 301, -10_000, 86_400])
def test_a_signature_outside_the_window_is_refused_as_a_replay(offset: int) -> None:
    signature = sign(KEY, NOW, BODY)
    with pytest.raises(StaleSignatureError, match="outside the 300 s window"):
        verify_signature(KEY, str(NOW), BODY, signature, now=NOW + offset)


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_the_window_edges_are_inside(offset: int) -> None:
    verify_signature(KEY, str(NOW), BODY, sign(KEY, NOW, BODY), now=NOW + offset)


def test_the_window_is_configurable() -> None:
    signature = sign(KEY, NOW, BODY)
    with pytest.raises(StaleSignatureError):
        verify_signature(KEY, str(NOW), BODY, signature, now=NOW + 31, window=30)


@pytest.mark.parametrize(
    ("key", "error"),
    [(b"short", InvalidArgumentError), (12345, TypeError), ("", InvalidArgumentError)],
)
def test_weak_or_wrong_keys_are_refused(key: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        sign(key, NOW, BODY)  # type: ignore[arg-type]


@given(body=st.binary(max_size=512), timestamp=st.integers(0, 10**11))
def test_any_signed_body_verifies(body: bytes, timestamp: int) -> None:
    signature = sign(KEY, timestamp, body)
    assert verify_signature(KEY, str(timestamp), body, signature, now=timestamp) == timestamp


@given(body=st.binary(min_size=1, max_size=256), data=st.data())
def test_changing_any_byte_of_the_body_is_refused(body: bytes, data: st.DataObject) -> None:
    signature = sign(KEY, NOW, body)
    index = data.draw(st.integers(0, len(body) - 1))
    flip = data.draw(st.integers(1, 255))
    altered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    with pytest.raises(SignatureError):
        verify_signature(KEY, str(NOW), altered, signature, now=NOW)
