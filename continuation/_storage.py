"""``ActorStorage``: an actor's synchronous key-value storage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import InvalidArgumentError, OutsideTurnError

if TYPE_CHECKING:
    from ._turn import ActorSlot, TurnBuffer

_MISSING: Any = object()


class ActorStorage:
    """Synchronous key-value storage private to one actor.

    Reads come from memory (the actor's state is loaded when it activates), so they never
    wait. Writes are buffered in the running turn and committed with it; a turn that raises
    leaves storage as it was. Values are stored with the trusted codec, and ``get`` returns
    a fresh copy, so mutating a value you read changes nothing until you ``put`` it back.
    """

    __slots__ = ("_slot",)

    def __init__(self, slot: ActorSlot) -> None:
        self._slot = slot

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""
        turn = self._slot.turn
        if turn is not None and key in turn.writes:
            data = turn.writes[key]
        else:
            data = self._slot.state.get(_checked_key(key))
        return default if data is None else self._slot.runtime.codec.loads(data)

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` when the turn commits."""
        data = self._slot.runtime.codec.dumps(value)
        self._writing().writes[_checked_key(key)] = data

    def delete(self, key: str) -> bool:
        """Remove ``key`` when the turn commits; whether it was there."""
        existed = key in self
        self._writing().writes[_checked_key(key)] = None
        return existed

    def list(self, prefix: str = "", *, limit: int | None = None) -> dict[str, Any]:
        """Keys starting with ``prefix`` and their values, in key order."""
        if limit is not None and type(limit) is not int:
            raise TypeError(f"limit must be an int, not {type(limit).__name__}")
        if limit is not None and limit < 0:
            raise InvalidArgumentError(f"limit must not be negative, not {limit}")
        merged: dict[str, bytes | None] = dict(self._slot.state)
        turn = self._slot.turn
        if turn is not None:
            merged.update(turn.writes)
        keys = sorted(k for k, v in merged.items() if v is not None and k.startswith(prefix))
        loads = self._slot.runtime.codec.loads
        return {k: loads(merged[k]) for k in keys[:limit]}  # type: ignore[arg-type]

    def __contains__(self, key: object) -> bool:
        turn = self._slot.turn
        if turn is not None and key in turn.writes:
            return turn.writes[key] is not None
        return key in self._slot.state

    def _writing(self) -> TurnBuffer:
        turn = self._slot.turn
        if turn is None:
            raise OutsideTurnError("storage can be written only during a turn of its actor")
        return turn

    def __repr__(self) -> str:
        return f"ActorStorage({self._slot.binding}/{self._slot.instance})"


def _checked_key(key: object) -> str:
    if type(key) is not str:
        raise TypeError(f"storage keys are str, not {type(key).__name__}")
    if "\x00" in key:
        raise InvalidArgumentError("storage keys cannot hold the NUL character")
    return key
