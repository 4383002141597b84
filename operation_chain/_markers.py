"""The ``RESULT`` and ``ERROR`` placeholders that execution replaces with injected values."""

from __future__ import annotations

from typing import Final, Literal

MarkerName = Literal["result", "error"]


class Marker:
    """A placeholder argument, replaced at execution time by ``inject[name]``.

    There are exactly two markers, ``RESULT`` and ``ERROR``; decoding returns these same
    objects, so ``is`` comparisons hold after a round trip.
    """

    __slots__ = ("name",)

    name: MarkerName

    def __new__(cls, name: MarkerName) -> Marker:
        existing = _MARKERS.get(name)
        if existing is not None:
            return existing
        if name not in ("result", "error"):
            raise ValueError(f"unknown marker {name!r}; the markers are 'result' and 'error'")
        marker = super().__new__(cls)
        marker.name = name
        _MARKERS[name] = marker
        return marker

    def __reduce__(self) -> tuple[type[Marker], tuple[MarkerName]]:
        return (Marker, (self.name,))

    def __repr__(self) -> str:
        return self.name.upper()

    def __str__(self) -> str:
        return f"<{self.name}>"


_MARKERS: dict[str, Marker] = {}

RESULT: Final = Marker("result")
ERROR: Final = Marker("error")
