"""What ``continue_`` does inside a turn: check everything, then buffer the new row."""

from __future__ import annotations

import functools
import os
import random
import time
from typing import TYPE_CHECKING, Any, Final

import orjson

from operation_chain import (
    ChainSecurityError,
    MarkerNotInjectedError,
    OperationChain,
    chain_of,
)

from ._continuation import (
    Continuation,
    chain_shape,
    check_handler_chain,
    continuation_class,
)
from ._errors import ContinuationChainError, ContinuationOptionsError
from ._options import AlarmOptions, parse_options
from ._store.base import NewContinuation
from ._strategy_options import (
    ProxyFetchOptions,
    RemoteCallOptions,
    SignalOptions,
    WorkOptions,
)
from ._work import RemoteCall

if TYPE_CHECKING:
    from ._turn import ActorSlot, Runtime, TurnBuffer


def schedule(
    slot: ActorSlot,
    turn: TurnBuffer,
    chain: object,
    error_chain: object,
    strategy: object,
    options: dict[str, Any],
) -> str:
    """Validate a continuation against the actor and buffer it in the turn; return its id.

    With a ``key`` that a pending continuation of this actor already holds (or one scheduled
    earlier in this turn), the existing id is returned and nothing new is scheduled.
    """
    parsed = parse_options(strategy, options)
    handler = _handler_chain(slot, chain, "handler chain", "result")
    fallback = (
        None if error_chain is None else _handler_chain(slot, error_chain, "error chain", "error")
    )
    if parsed.key is not None:
        existing = slot.keys.get(parsed.key) or next(
            (new.id for new in turn.new if new.key == parsed.key), None
        )
        if existing is not None and existing not in turn.cancels:
            return existing
    codec = slot.runtime.codec
    new = NewContinuation(
        id=new_continuation_id(),
        binding=slot.binding,
        instance=slot.instance,
        strategy=parsed.strategy,
        chain=codec.dumps(handler),
        error_chain=None if fallback is None else codec.dumps(fallback),
        chain_text=str(handler),
        error_chain_text=None if fallback is None else str(fallback),
        options="{}",
        retry=None if parsed.retry is None else parsed.retry.model_dump_json(),
        due_at=None,
        key=parsed.key,
        cron=None,
        version=slot.cls.version,
    )
    if isinstance(parsed, AlarmOptions):
        new.options = (
            "{}"
            if parsed.timezone is None
            else parsed.model_dump_json(include={"timezone"}, exclude_none=True)
        )
        new.due_at = parsed.first_due(turn.now)
        new.cron = parsed.cron
    else:
        assert isinstance(parsed, WorkOptions)
        new.options = _timeout_options(parsed.timeout)
        new.due_at = parsed.deadline(turn.now)
        new.phase = "waiting"
        if isinstance(parsed, RemoteCallOptions):
            new.work = codec.dumps(_remote_call(slot, parsed))
        elif isinstance(parsed, ProxyFetchOptions):
            new.work = codec.dumps(parsed.request)
        else:
            assert isinstance(parsed, SignalOptions)
            new.wait_name = parsed.name
    turn.add_new(new)
    return new.id


@functools.lru_cache(maxsize=64)
def _timeout_options(timeout: float | None) -> str:
    """The stored options of a strategy's work: its timeout, as JSON (the same few values
    come again and again)."""
    return orjson.dumps({"timeout": timeout}).decode()


def _remote_call(slot: ActorSlot, options: RemoteCallOptions) -> RemoteCall:
    """The work of a remote call, its call checked against the target class."""
    target = continuation_class(options.call)
    declared = getattr(target, "binding", None)
    if isinstance(declared, str) and declared != options.binding:
        raise ContinuationOptionsError(
            f"the call was recorded on {target.__name__}, whose binding is {declared!r},"
            f" but binding={options.binding!r}"
        )
    if options.binding not in slot.runtime.bindings:
        raise ContinuationOptionsError(
            f"no actor class is registered for binding {options.binding!r} and it is not"
            " among the system's remotes"
        )
    chain = options.call_chain
    _check_chain(slot.runtime, target, chain, "call", frozenset(), synchronous=False)
    return RemoteCall(options.binding, options.instance, chain)


_last_id_time = 0
# secrets.token_hex reads os.urandom on every call and releases the GIL each time, which
# showed up at 12 µs per id under load; a generator seeded from urandom (again after a fork,
# so parent and child never share a sequence) costs about 1 µs.
_id_random = random.Random()
os.register_at_fork(after_in_child=_id_random.seed)


def new_continuation_id() -> str:
    """A 32-hex-digit id that sorts in creation order within a process.

    Continuations due at the same instant fire in id order, so ids that follow creation
    order make ties fire in the order they were scheduled. The random half keeps ids from
    different processes apart.
    """
    global _last_id_time
    now = time.time_ns()
    if now <= _last_id_time:
        now = _last_id_time + 1
    _last_id_time = now
    return "%016x%016x" % (now, _id_random.getrandbits(64))  # noqa: UP031 (the quickest)


_INJECTED: Final = {name: frozenset((name,)) for name in ("result", "error")}
_PASSED_LIMIT: Final = 4096
"""Chain shapes remembered as good per system, at most (classes can be made at run time)."""


def _handler_chain(slot: ActorSlot, proxy: object, role: str, marker: str) -> OperationChain:
    if not isinstance(proxy, Continuation):
        raise ContinuationChainError(
            f"the {role} must be recorded on Continuation(self), not {type(proxy).__name__}"
        )
    recorded_for = continuation_class(proxy)
    if not issubclass(slot.cls, recorded_for):
        raise ContinuationChainError(
            f"the {role} was recorded for {recorded_for.__name__}, but an alarm runs it on"
            f" {slot.cls.__name__}; record it on Continuation(self)"
        )
    chain = chain_of(proxy)
    _check_chain(slot.runtime, slot.cls, chain, role, _INJECTED[marker])
    return chain


def _check_chain(
    runtime: Runtime,
    cls: type,
    chain: OperationChain,
    role: str,
    injected: frozenset[str],
    *,
    synchronous: bool = True,
) -> None:
    """Check ``chain`` against ``cls`` (``check_handler_chain``) and the system's policy,
    with the markers in ``injected``; raise ``ContinuationChainError`` naming the problem.

    A flat chain whose shape passed before is not checked again (see ``chain_shape``): the
    checks make a mistake fail in the turn that made it, and the executor checks every
    chain again, in full, when it runs.
    """
    shape = chain_shape(chain.ops)
    key = None if shape is None else (cls, synchronous, injected, shape)
    passed = runtime.passed_checks
    if key is not None and key in passed:
        return
    check_handler_chain(cls, chain, role=role, synchronous=synchronous)
    try:
        runtime.policy.check(chain, injected=injected)
    except (ChainSecurityError, MarkerNotInjectedError) as exc:
        hint = " (c.result belongs in the handler chain, c.error in the error chain)"
        extra = hint if isinstance(exc, MarkerNotInjectedError) and injected else ""
        raise ContinuationChainError(f"the {role} {str(chain)!r} is refused: {exc}{extra}") from exc
    if key is not None and len(passed) < _PASSED_LIMIT:
        passed.add(key)
