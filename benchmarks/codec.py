"""Codec and chain benchmark: one run, one table.

    python benchmarks/codec.py [--quick]

Rows:
- encode+decode of a ~50-key nested JSON-native payload through our safe codec
  (``dumps``/``loads``), next to ``json``, ``pydantic_core`` and ``pickle`` on the same payload;
- the same payload with some non-JSON values (bytes, datetime, tuple), which takes the
  codec's full path;
- record + encode + decode + execute of a 3-operation nested chain, ``p.a(1).b(p.c())``;
- ``dumps`` of a small handler chain 20,000 times with every result kept, as a busy system
  keeps its encoded chains and values until they commit, next to ``orjson.dumps`` of the same
  tree kept the same way (the cost the codec's copy of each result avoids).

Targets: the codec within 2.5x of ``pydantic_core`` on JSON-native data; the chain round trip
under 30 microseconds. Each figure is the best of several repeats (the least disturbed by
other work on the machine), in microseconds per operation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import pickle
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import pydantic_core

from operation_chain import (
    RESULT,
    OperationChain,
    OperationProxy,
    chain_of,
    dumps,
    execute_operation_chain,
    loads,
)

CODEC_TARGET = 2.5
CHAIN_TARGET_US = 30.0


def json_native_payload() -> dict[str, Any]:
    """About 50 keys: scalars, short lists and small objects, three levels deep."""
    payload: dict[str, Any] = {}
    for i in range(50):
        kind = i % 5
        if kind == 0:
            payload[f"count_{i}"] = i * 1000
        elif kind == 1:
            payload[f"label_{i}"] = f"value number {i}"
        elif kind == 2:
            payload[f"series_{i}"] = [i, i + 1, {"x": i * 1.5, "ok": True}]
        elif kind == 3:
            payload[f"item_{i}"] = {"name": f"n{i}", "tags": ["a", "b"], "note": None}
        else:
            payload[f"ratio_{i}"] = i / 7
    return payload


def mixed_payload() -> dict[str, Any]:
    payload = json_native_payload()
    payload["blob"] = b"\x00\x01" * 8
    payload["when"] = dt.datetime(2026, 11, 21, 12, tzinfo=dt.UTC)
    payload["pair"] = (1, "two")
    return payload


class Target:
    """The object the benchmark chain runs against."""

    def a(self, n: int) -> Target:
        return self

    def b(self, value: int) -> int:
        return value + 1

    def c(self) -> int:
        return 41


def chain_roundtrip(target: Target) -> int:
    p = OperationProxy()
    chain = chain_of(p.a(1).b(p.c()))
    result: int = execute_operation_chain(target, OperationChain.from_json(chain.to_json()))
    return result


def best_us(func: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e6


def kept_us(encode: Callable[[], bytes], count: int, repeat: int) -> float:
    """Microseconds per call of ``count`` encodings whose results are all kept."""
    best = math.inf
    for _ in range(repeat):
        kept = []
        start = time.perf_counter()
        for _ in range(count):
            kept.append(encode())
        best = min(best, (time.perf_counter() - start) / count)
        del kept
    return best * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    args = parser.parse_args()
    number, repeat = (200, 3) if args.quick else (5000, 7)

    payload = json_native_payload()
    mixed = mixed_payload()
    assert loads(dumps(payload)) == payload
    assert loads(dumps(mixed)) == mixed
    target = Target()
    assert chain_roundtrip(target) == 42
    p = OperationProxy()
    handler = chain_of(p.recorded(5, RESULT))
    handler_tree = orjson.loads(dumps(handler))
    kept = 2_000 if args.quick else 20_000

    rows = [
        ("ocan dumps+loads, JSON-native", best_us(lambda: loads(dumps(payload)), number, repeat)),
        ("json dumps+loads", best_us(lambda: json.loads(json.dumps(payload)), number, repeat)),
        (
            "pydantic_core to_json+from_json",
            best_us(
                lambda: pydantic_core.from_json(pydantic_core.to_json(payload)), number, repeat
            ),
        ),
        (
            "pickle dumps+loads",
            best_us(lambda: pickle.loads(pickle.dumps(payload)), number, repeat),
        ),
        ("ocan dumps+loads, mixed types", best_us(lambda: loads(dumps(mixed)), number, repeat)),
        (
            "chain record+encode+decode+execute",
            best_us(lambda: chain_roundtrip(target), number, repeat),
        ),
        (
            f"ocan dumps of a small chain, {kept:,} kept",
            kept_us(lambda: dumps(handler), kept, repeat),
        ),
        (
            f"orjson.dumps of its tree, {kept:,} kept",
            kept_us(lambda: orjson.dumps(handler_tree), kept, repeat),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'benchmark':<{width}}  {'us/op':>8}")
    print(f"{'-' * width}  {'-' * 8}")
    for name, micros in rows:
        print(f"{name:<{width}}  {micros:>8.2f}")

    ratio = rows[0][1] / rows[2][1]
    chain_us = rows[5][1]
    print()
    print(f"ocan / pydantic_core on JSON-native data: {ratio:.2f}x (target <= {CODEC_TARGET}x)")
    print(f"chain round trip: {chain_us:.1f} us (target < {CHAIN_TARGET_US:.0f} us)")
    met = ratio <= CODEC_TARGET and chain_us < CHAIN_TARGET_US
    print("targets met" if met else "TARGETS MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
