"""Strategy options, validated with pydantic when ``continue_`` is called, not when it fires."""

from __future__ import annotations

import functools
import random
from datetime import datetime, timedelta
from typing import Any, ClassVar, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._errors import ContinuationOptionsError


class RetryPolicy(BaseModel):
    """How a failing handler is retried: capped exponential backoff with jitter.

    Attempt ``n`` (1-based) that fails waits ``min(max_delay, base_delay * 2 ** (n - 1))``,
    shortened by up to ``jitter`` of itself at random so that many failures at once do not
    retry in lockstep. After ``max_attempts`` failed attempts the continuation is ``dead``.

    Attributes:
        max_attempts: attempts in all, the first included (1 means no retry).
        base_delay: seconds before the first retry.
        max_delay: the cap on any one delay, in seconds.
        jitter: the fraction (0 to 1) of a delay that may be taken off at random.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    max_attempts: int = Field(default=5, ge=1)
    base_delay: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    max_delay: float = Field(default=300.0, ge=0, allow_inf_nan=False)
    jitter: float = Field(default=0.1, ge=0, le=1)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        capped = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 60))
        return capped * (1.0 - self.jitter * (rng or random).random())


NO_NUL: Final = r"^[^\x00]*$"
"""Names and keys may hold any character but NUL, which PostgreSQL text cannot store."""


class StrategyOptions(BaseModel):
    """Options every strategy takes."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    strategy: ClassVar[str]

    retry: RetryPolicy | None = None
    key: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_NUL)

    @field_validator("retry", mode="before")
    @classmethod
    def _retry_count(cls, value: Any) -> Any:
        # ``retry=3`` is shorthand for ``RetryPolicy(max_attempts=3)``.
        if isinstance(value, int) and not isinstance(value, bool):
            return RetryPolicy(max_attempts=value)
        return value


class AlarmOptions(StrategyOptions):
    """``strategy="alarm"``: exactly one of ``delay``, ``at`` or ``cron``.

    Attributes:
        delay: seconds (or a timedelta) from the end of the scheduling turn; 0 or less fires
            as soon as that turn commits.
        at: an aware datetime.
        cron: a cron expression (5 fields, or 6 with seconds), recurring until cancelled.
        timezone: the IANA zone ``cron`` is read in; UTC by default.
    """

    strategy: ClassVar[str] = "alarm"

    delay: float | None = Field(default=None, allow_inf_nan=False)
    at: datetime | None = None
    cron: str | None = None
    timezone: str | None = None

    @field_validator("delay", mode="before")
    @classmethod
    def _delay_seconds(cls, value: Any) -> Any:
        return value.total_seconds() if isinstance(value, timedelta) else value

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError("needs an aware datetime (with a tzinfo), so the instant is clear")
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _one_time(self) -> AlarmOptions:
        given = [name for name in ("delay", "at", "cron") if getattr(self, name) is not None]
        if len(given) != 1:
            what = " and ".join(given) if given else "none of them"
            raise ValueError(f"give exactly one of delay, at or cron (got {what})")
        if self.timezone is not None and self.cron is None:
            raise ValueError("timezone applies to cron only")
        return self

    def first_due(self, now: float) -> float:
        """When the first occurrence is due, in epoch seconds."""
        if self.delay is not None:
            return now + max(self.delay, 0.0)
        if self.at is not None:
            return self.at.timestamp()
        return next_cron_time(self.cron or "", self.timezone, now)


def next_cron_time(expression: str, timezone: str | None, after: float) -> float:
    """The first time strictly after ``after`` that ``expression`` matches."""
    zone = ZoneInfo(timezone or "UTC")
    start = datetime.fromtimestamp(after, zone)
    return float(croniter(expression, start).get_next(float))


STRATEGIES: dict[str, type[StrategyOptions]] = {"alarm": AlarmOptions}


def parse_options(strategy: object, options: dict[str, Any]) -> StrategyOptions:
    """Validate ``options`` for ``strategy``; raise ``ContinuationOptionsError`` naming
    every problem."""
    model = STRATEGIES.get(strategy) if isinstance(strategy, str) else None
    if model is None:
        known = ", ".join(sorted(STRATEGIES))
        raise ContinuationOptionsError(f"unknown strategy {strategy!r}; available: {known}")
    key = None
    if model is AlarmOptions:  # others hold objects (calls, requests) not worth caching
        try:
            key = tuple(sorted(options.items()))
            hash(key)
        except TypeError:
            key = None
    try:
        return _parse_cached(model, key) if key is not None else model(**options)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise ContinuationOptionsError(
            f"bad options for strategy {strategy!r}: {problems}"
        ) from exc


@functools.lru_cache(maxsize=256)
def _parse_cached(
    model: type[StrategyOptions], items: tuple[tuple[str, Any], ...]
) -> StrategyOptions:
    # Options are immutable, and most calls repeat a few combinations (delay=0, cron=...).
    return model(**dict(items))


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
