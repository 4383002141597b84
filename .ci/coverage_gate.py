#!/usr/bin/env python3
"""Fail CI when total coverage falls below the project's floor.

Reads the JSON report written by ``pytest --cov-report=json:coverage.json`` (coverage.py's
``json`` format) and computes, from its ``totals``:

* statement coverage = ``covered_lines / num_statements``
* branch coverage    = ``covered_branches / num_branches``

coverage.py's own ``percent_covered`` mixes the two into one number, which would let good
statement coverage hide poor branch coverage; the project gates each separately.

Exit status: 0 when both meet their minimum, 1 when either is below it, 2 when the report is
missing or unusable (no statements measured, or branch measurement was off).
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

MIN_STATEMENTS = Fraction(90)
MIN_BRANCHES = Fraction(80)


class ReportError(Exception):
    """The coverage report cannot be used to judge coverage."""


def read_totals(path: Path) -> dict[str, Any]:
    """The ``totals`` object of a coverage.py JSON report, with the fields the gate needs."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path} does not exist; did the test step write it?") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path} is not a readable JSON file: {exc}") from exc
    totals = report.get("totals") if isinstance(report, dict) else None
    if not isinstance(totals, dict):
        raise ReportError(f"{path} has no 'totals' object; is it a coverage.py JSON report?")
    if "num_branches" not in totals or "covered_branches" not in totals:
        raise ReportError(f"{path} has no branch data; run coverage with branch measurement on")
    for key in ("covered_lines", "num_statements", "covered_branches", "num_branches"):
        if not isinstance(totals.get(key), int):
            raise ReportError(f"{path}: totals.{key} is missing or not an integer")
    if totals["num_statements"] == 0:
        raise ReportError(f"{path} measured no statements; check [tool.coverage.run] source")
    return totals


def percent(covered: int, total: int) -> Fraction:
    """Exact percentage; no branches at all counts as fully covered."""
    return Fraction(100) if total == 0 else Fraction(100 * covered, total)


def describe(label: str, covered: int, total: int, value: Fraction, minimum: Fraction) -> str:
    verdict = "ok" if value >= minimum else "BELOW MINIMUM"
    # Truncate rather than round, so 89.996% never prints as a passing-looking "90.00%".
    shown = f"{int(value * 100) // 100}.{int(value * 100) % 100:02d}"
    return f"{label:<10} {shown:>6}%  ({covered}/{total}, minimum {minimum}%)  {verdict}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("report", type=Path, help="coverage.py JSON report (coverage.json)")
    parser.add_argument("--min-statements", type=Fraction, default=MIN_STATEMENTS)
    parser.add_argument("--min-branches", type=Fraction, default=MIN_BRANCHES)
    args = parser.parse_args(argv)

    try:
        totals = read_totals(args.report)
    except ReportError as exc:
        print(f"coverage gate: error: {exc}", file=sys.stderr)
        return 2

    checks = [
        ("statements", totals["covered_lines"], totals["num_statements"], args.min_statements),
        ("branches", totals["covered_branches"], totals["num_branches"], args.min_branches),
    ]
    failed = []
    for label, covered, total, minimum in checks:
        value = percent(covered, total)
        print(describe(label, covered, total, value, minimum), flush=True)
        if value < minimum:
            failed.append(label)
    if failed:
        print(
            f"coverage gate: FAILED: {' and '.join(failed)} coverage below the minimum "
            "(see the missing lines in the coverage report above)",
            file=sys.stderr,
        )
        return 1
    print("coverage gate: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
