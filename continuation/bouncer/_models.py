"""The body of ``POST /waits``, validated by pydantic before anything is stored."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from .._errors import InvalidArgumentError

MAX_CALLBACK_LENGTH: Final = 2048
MAX_KEY_LENGTH: Final = 200

Seconds = Annotated[float, Field(allow_inf_nan=False)]


class WaitRequest(BaseModel):
    """A wait to register: exactly one of ``delay`` and ``at``, and where to call back.

    Attributes:
        delay: seconds from now.
        at: when, as epoch seconds or an ISO 8601 datetime with a time zone.
        callback: the ``http`` or ``https`` URL to POST to when the wait is due.
        payload: any JSON value, sent back as it is.
        key: an idempotency key: registering the same key again returns the existing wait
            (until that wait is cancelled).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    delay: Seconds | None = None
    at: Seconds | datetime | None = None
    callback: str = Field(min_length=1, max_length=MAX_CALLBACK_LENGTH)
    payload: JsonValue = None
    key: str | None = Field(default=None, min_length=1, max_length=MAX_KEY_LENGTH)

    @field_validator("callback")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError("the callback must be an http or https URL")
        if not parts.hostname:
            raise ValueError("the callback URL has no host")
        if port == 0 or any(ch.isspace() or not ch.isprintable() for ch in value):
            raise ValueError("not a valid URL")
        return value

    @field_validator("payload")
    @classmethod
    def _finite(cls, value: JsonValue) -> JsonValue:
        # JSON has no NaN or Infinity; the parser takes them, but receivers could not.
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError("numbers in the payload must be finite")
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
        return value

    @field_validator("at")
    @classmethod
    def _aware(cls, value: float | datetime | None) -> float | datetime | None:
        if isinstance(value, datetime) and value.utcoffset() is None:
            raise ValueError("needs a time zone (e.g. 'Z' or '+00:00'), so the instant is clear")
        return value

    @model_validator(mode="after")
    def _one_time(self) -> WaitRequest:
        if (self.delay is None) == (self.at is None):
            raise ValueError("give exactly one of delay and at")
        return self

    def due_at(self, now: float) -> float:
        """When the wait is due, in epoch seconds, if registered at ``now``."""
        if self.delay is not None:
            return now + self.delay
        at = self.at
        return at.timestamp() if isinstance(at, datetime) else float(at or 0.0)


def checked_number(name: str, value: object, *, allow_zero: bool = False) -> float:
    """``value`` as a float, refused unless a finite positive (or, with ``allow_zero``,
    non-negative) number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        sign_ = "non-negative" if allow_zero else "positive"
        raise InvalidArgumentError(f"{name} must be a finite {sign_} number, not {value!r}")
    return float(value)
