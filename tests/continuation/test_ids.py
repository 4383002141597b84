"""Continuation ids: 32 hex digits that sort in creation order within a process."""

from __future__ import annotations

import re

import pytest

from continuation import _scheduling
from continuation._scheduling import new_continuation_id


def test_ids_sort_in_creation_order_even_when_the_clock_stands_still(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = [new_continuation_id() for _ in range(3)]
    monkeypatch.setattr(_scheduling.time, "time_ns", lambda: 1_000)  # behind the last id
    ids += [new_continuation_id() for _ in range(3)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", cid) for cid in ids)
    assert ids == sorted(ids)
    assert len({cid[:16] for cid in ids}) == len(ids)  # the time half alone orders them


def test_the_random_half_differs_between_ids() -> None:
    assert len({new_continuation_id()[16:] for _ in range(100)}) == 100
