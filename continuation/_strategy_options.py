"""Options of the strategies that hand work off the turn: remote-call, proxy-fetch, signal.

Each is validated by pydantic when ``continue_`` is called, like the alarm's. Importing this
module registers them under their strategy names.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

import httpx
from pydantic import Field, field_validator

from operation_chain import OperationChain, chain_of

from ._continuation import Continuation
from ._fetch import FetchRequest
from ._options import NO_NUL, STRATEGIES, StrategyOptions


def _seconds(value: Any) -> Any:
    return value.total_seconds() if isinstance(value, timedelta) else value


class WorkOptions(StrategyOptions):
    """Options of a strategy whose work is out of the turn.

    Attributes:
        timeout: seconds the work may take, counted from the commit of the scheduling turn
            (or from each new dispatch after a failure). When it runs out first,
            ``TimeoutError`` goes to ``c.error``; an outcome arriving later is ignored and
            recorded in the audit trail. ``None`` waits for ever.
    """

    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    _timeout_seconds = field_validator("timeout", mode="before")(_seconds)

    def deadline(self, now: float) -> float | None:
        """When the work times out, if it started at ``now``."""
        return None if self.timeout is None else now + self.timeout


class RemoteCallOptions(WorkOptions):
    """``strategy="remote-call"``: call a method of another actor, in that actor's own turn.

    Attributes:
        binding: the target actor's binding.
        instance: the target actor's instance id.
        call: the call, recorded on ``Continuation(TargetClass)``; its return value is
            ``c.result``, its exception ``c.error``.
        timeout: as for every strategy; 30 s by default.
    """

    strategy: ClassVar[str] = "remote-call"

    binding: str = Field(min_length=1, max_length=1024, pattern=NO_NUL)
    instance: str = Field(min_length=1, max_length=1024, pattern=NO_NUL)
    call: Continuation
    timeout: float | None = Field(default=30.0, gt=0, allow_inf_nan=False)

    @field_validator("call", mode="before")
    @classmethod
    def _recorded_call(cls, value: Any) -> Any:
        if not isinstance(value, Continuation):
            raise ValueError(
                "must be a call recorded on Continuation(TargetClass), like"
                f" Continuation(Billing).charge(10), not {type(value).__name__}"
            )
        if not chain_of(value).ops:
            raise ValueError("must record a call, like Continuation(Billing).charge(10)")
        return value

    @property
    def call_chain(self) -> OperationChain:
        """The recorded call."""
        return chain_of(self.call)


class ProxyFetchOptions(WorkOptions):
    """``strategy="proxy-fetch"``: an HTTP request made after the turn commits.

    Attributes:
        request: a ``FetchRequest``, or an ``httpx.Request`` (converted at once).
        timeout: the deadline of the whole fetch, retries included; 30 s by default.
        retry: the attempts of the request (connection errors, timeouts, 429 and 5xx are
            retried, honouring ``Retry-After``); a ``FetchError`` after the last one goes to
            ``c.error``, or, without an error chain, makes the continuation ``dead``.
    """

    strategy: ClassVar[str] = "proxy-fetch"

    request: FetchRequest
    timeout: float | None = Field(default=30.0, gt=0, allow_inf_nan=False)

    @field_validator("request", mode="before")
    @classmethod
    def _from_httpx(cls, value: Any) -> Any:
        if isinstance(value, httpx.Request):
            return FetchRequest.from_httpx(value)
        if not isinstance(value, FetchRequest):
            raise ValueError(
                f"must be a FetchRequest or an httpx.Request, not {type(value).__name__}"
            )
        return value


class SignalOptions(WorkOptions):
    """``strategy="signal"``: wait for ``system.signal(binding, instance, name, payload)``.

    Attributes:
        name: the signal waited for; its payload is ``c.result``.
        timeout: ``None`` (the default) waits for ever.
    """

    strategy: ClassVar[str] = "signal"

    name: str = Field(min_length=1, max_length=200, pattern=NO_NUL)


STRATEGIES.update(
    {
        RemoteCallOptions.strategy: RemoteCallOptions,
        ProxyFetchOptions.strategy: ProxyFetchOptions,
        SignalOptions.strategy: SignalOptions,
    }
)
