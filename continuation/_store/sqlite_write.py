"""A batch of turns (or a purge) written to SQLite in one transaction, as plain synchronous
code.

The whole transaction runs as one call on the writer connection's thread: a batch written
statement by statement from the event loop waits, at every statement, behind whatever else
the loop has ready (the turns being fired), which made each commit take many times its
SQLite time under load. Run in one call, it waits once.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, TypeVar

from .base import Commit, RowUpdate, SignalSend, refused_turns

R = TypeVar("R")

_INSERT_CONTINUATION: Final = (
    "INSERT INTO continuations (id, binding, instance, strategy, status, chain, error_chain,"
    " chain_text, error_chain_text, options, retry, due_at, scheduled_at, created_at,"
    " updated_at, key, cron, version, phase, work, wait_name) VALUES {rows}"
)
_INSERT_CONTINUATION_ROW: Final = "(?, ?, ?, ?, 'pending', " + ", ".join("?" * 16) + ")"
# The columns a fired continuation's update may set (see RowUpdate.columns), in the order
# of its full update.
_UPDATABLE: Final[tuple[str, ...]] = (
    "status", "due_at", "scheduled_at", "attempts", "last_error", "last_traceback",
    "finished_at", "cancel_requested", "phase", "outcome",
)  # fmt: skip
_READY: Final = (
    "UPDATE continuations SET phase = 'ready', outcome = ?, due_at = ?, updated_at = ?,"
    " revision = revision + 1 WHERE id = ?"
)
_OWN_PENDING: Final = "id = ? AND binding = ? AND instance = ? AND status = 'pending'"
_CANCEL_STATEMENTS: Final = (
    # A continuation with an error chain stays pending until ContinuationCancelled reaches it.
    "INSERT INTO audit (cid, at, event, detail) SELECT id, ?, 'cancel requested', NULL"
    f" FROM continuations WHERE {_OWN_PENDING} AND cancel_requested = 0"
    " AND error_chain IS NOT NULL",
    "UPDATE continuations SET cancel_requested = 1, attempts = 0, due_at = ?, updated_at = ?,"
    f" revision = revision + 1 WHERE {_OWN_PENDING} AND cancel_requested = 0"
    " AND error_chain IS NOT NULL",
    "INSERT INTO audit (cid, at, event, detail) SELECT id, ?, 'cancelled', NULL"
    f" FROM continuations WHERE {_OWN_PENDING} AND error_chain IS NULL",
    "UPDATE continuations SET status = 'cancelled', due_at = NULL, finished_at = ?,"
    f" updated_at = ?, revision = revision + 1 WHERE {_OWN_PENDING} AND error_chain IS NULL",
)
_FENCE: Final = (
    "SELECT v.column1, c.revision FROM (VALUES {rows}) AS v LEFT JOIN continuations AS c"
    " ON c.id = v.column1 WHERE c.revision IS NOT v.column2"
)
_PUT_STATE: Final = (
    "INSERT INTO actor_state (binding, instance, key, value) VALUES {rows}"
    " ON CONFLICT (binding, instance, key) DO UPDATE SET value = excluded.value"
)
_INSERT_AUDIT: Final = "INSERT INTO audit (cid, at, event, detail) VALUES {rows}"
# Rows in one statement, at most (SQLite's variable limit may allow fewer). Each statement
# costs the writer's thread at least one GIL hand-over, which waits for a busy event loop;
# a group commit of 12,000 new rows is 49 insert statements at 256 rows, 15 at 1,024.
_MAX_ROWS: Final = 1024


def _fence(db: sqlite3.Connection, commits: Sequence[Commit]) -> set[int]:
    """Indexes of the commits to refuse (see ``refused_turns``)."""
    first: dict[str, int] = {}  # the revision each row's first update was computed from
    for commit in commits:
        if commit.update is not None:
            first.setdefault(commit.update.id, commit.update.revision)
    if not first:
        return set()
    # Only the rows at another revision (or gone) come back (see _chunked on why).
    revisions = dict(first)
    for sql, params in _chunked(db, _FENCE, list(first.items())):
        for cid, revision in db.execute(sql, params):
            if revision is None:
                del revisions[cid]
            else:
                revisions[cid] = revision
    return set(refused_turns(commits, revisions))


def _write(db: sqlite3.Connection, commits: Sequence[Commit], *, fenced: bool = False) -> None:
    """Apply the effects of ``commits`` as if one after another; with ``fenced``, raise
    ``_Changed`` if an update's row is not at the revision it was read at.

    Rows are grouped by kind into many-row statements, so the order of kinds matters:
    storage (the last write of a key wins), updates of fired continuations (which free their
    dedup keys), new continuations, then cancellations (which may target new ones).
    """
    state: dict[tuple[str, str, str], bytes | None] = {}
    inserts: list[tuple[Any, ...]] = []
    updates: list[tuple[RowUpdate, float]] = []
    events: list[tuple[str, float, str, str | None]] = []
    cancels: list[tuple[Any, ...]] = []
    waiters: list[tuple[str, str, str, str, float]] = []
    signals: list[tuple[SignalSend, float]] = []
    results: list[tuple[str, str, str, bytes, float]] = []
    rewaits: list[tuple[str, float]] = []
    for commit in commits:
        b, i, now = commit.binding, commit.instance, commit.now
        for key, value in commit.writes.items():
            state[b, i, key] = value
        for new in commit.new:
            inserts.append(
                (new.id, new.binding, new.instance, new.strategy, new.chain, new.error_chain,
                 new.chain_text, new.error_chain_text, new.options, new.retry, new.due_at,
                 now if new.due_at is None else new.due_at, now, now, new.key, new.cron,
                 new.version, new.phase, new.work,
                 new.wait_name)
            )  # fmt: skip
            if new.wait_name is not None:
                waiters.append((new.id, new.binding, new.instance, new.wait_name, now))
        update = commit.update
        if update is not None:
            updates.append((update, now))
            events.extend((update.id, now, event, detail) for event, detail in update.events)
            if update.phase == "waiting" and update.status == "pending":
                rewaits.append((update.id, now))
        cancels.extend((now, cid, b, i) for cid in commit.cancels)
        signals.extend((signal, now) for signal in commit.signals)
        if commit.call_result is not None:
            results.append((b, i, *commit.call_result, now))
        events.extend((cid, now, event, detail) for cid, event, detail in commit.notes)
    deletes = [key for key, value in state.items() if value is None]
    puts = [(*key, value) for key, value in state.items() if value is not None]
    if deletes:
        db.executemany(
            "DELETE FROM actor_state WHERE binding = ? AND instance = ? AND key = ?", deletes
        )
    _execute_chunked(db, _PUT_STATE, puts)
    _update_continuations(db, updates, fenced=fenced)
    _execute_chunked(db, _INSERT_CONTINUATION, inserts, _INSERT_CONTINUATION_ROW)
    if results:
        db.executemany(
            "INSERT OR REPLACE INTO call_results (binding, instance, key, outcome, at)"
            " VALUES (?, ?, ?, ?, ?)",
            results,
        )
    for cid, now in rewaits:
        # A signal waiter waiting again (after a timeout, or a retry) takes what arrived
        # in between, as a new waiter would.
        sql = "SELECT binding, instance, wait_name FROM continuations WHERE id = ?"
        found = db.execute(sql, (cid,)).fetchone()
        if found is not None and found[2] is not None:
            waiters.append((cid, found[0], found[1], found[2], now))
    for waiter in waiters:
        _take_buffered_signal(db, *waiter)
    for signal, now in signals:
        _send_signal(db, signal, now)
    _execute_chunked(db, _INSERT_AUDIT, events)
    for statement in _CANCEL_STATEMENTS:
        if cancels:
            times = 1 if statement.startswith("INSERT") else 2
            db.executemany(statement, [(*(c[0],) * times, *c[1:]) for c in cancels])


def _update_continuations(
    db: sqlite3.Connection, updates: Sequence[tuple[RowUpdate, float]], *, fenced: bool
) -> None:
    """Write the updates of fired continuations in one statement, setting only the columns
    some update of the batch may change; with ``fenced``, only where the row is still at
    the update's revision, raising ``_Changed`` if any is not.

    SQLite maintains every index that reads a column in the ``SET`` list (partial indexes
    included), whatever the values: a batch of plain completions and delivered outcomes
    sets their few columns, about two thirds of the cost of setting all. A column that
    another update of the batch changes is written back unchanged (every update holds the
    row's whole new state): one statement instead of one per set of columns is one wait
    fewer for the GIL, which costs more than the extra index work. Updates that follow
    each other on one row (a delivered outcome, then the handler's completion computed
    from it) are written as one, since a many-row statement updates each row once.
    """
    merged: dict[str, tuple[int, int, RowUpdate, float]] = {}
    every: set[str] = set()
    for update, now in updates:
        every.update(update.columns or _UPDATABLE)
        earlier = merged.get(update.id)
        if earlier is None:
            merged[update.id] = (update.revision, 1, update, now)
            continue
        revision, count, _, _ = earlier
        if update.revision != revision + count:
            # Computed from the same revision as an earlier update of the batch: not both
            # can commit. Only after the fence (which refuses one) can this not happen.
            raise _Changed
        merged[update.id] = (revision, count + 1, update, now)
    names = tuple(name for name in _UPDATABLE if name in every)
    rows = [
        (update.id, now, revision, count, *[getattr(update, name) for name in names])
        for revision, count, update, now in merged.values()
    ]
    changed = _execute_chunked(db, _update_statement(names, fenced=fenced), rows)
    if fenced and changed != len(rows):
        raise _Changed


@functools.lru_cache(maxsize=32)
def _update_statement(columns: tuple[str, ...], *, fenced: bool) -> str:
    """The many-row update of ``columns``, from rows of (id, now, revision, updates,
    *values): ``updates`` is how many updates the row's values sum up; with ``fenced``,
    only rows still at ``revision`` are updated."""
    if not set(columns) <= set(_UPDATABLE):  # never from outside; but names go into SQL
        raise ValueError(f"not updatable columns: {sorted(set(columns) - set(_UPDATABLE))}")
    sets = "".join(f" {name} = v.column{5 + i}," for i, name in enumerate(columns))
    fence = " AND continuations.revision = v.column3" if fenced else ""
    return (
        f"UPDATE continuations SET{sets} updated_at = v.column2,"
        " revision = continuations.revision + v.column4"
        f" FROM (VALUES {{rows}}) AS v WHERE continuations.id = v.column1{fence}"
    )


def _take_buffered_signal(
    db: sqlite3.Connection, cid: str, binding: str, instance: str, name: str, now: float
) -> None:
    """A new signal continuation takes the oldest signal that arrived before it waited."""
    sql = (
        "SELECT seq, payload FROM signals INDEXED BY signals_waiting"
        " WHERE binding = ? AND instance = ? AND name = ? ORDER BY seq LIMIT 1"
    )
    found = db.execute(sql, (binding, instance, name)).fetchone()
    if found is None:
        return
    db.execute("DELETE FROM signals WHERE seq = ?", (found[0],))
    db.execute(_READY, (found[1], now, now, cid))
    db.execute(
        "INSERT INTO audit (cid, at, event, detail) VALUES (?, ?, 'signal received', ?)",
        (cid, now, f"{name!r}, sent before the wait began"),
    )


def _send_signal(db: sqlite3.Connection, signal: SignalSend, now: float) -> None:
    """Deliver a signal to the oldest continuation waiting for it, or buffer it."""
    sql = (
        "SELECT id FROM continuations INDEXED BY continuations_signal WHERE binding = ?"
        " AND instance = ? AND wait_name = ? AND status = 'pending' AND phase = 'waiting'"
        " AND cancel_requested = 0 ORDER BY id LIMIT 1"
    )
    found = db.execute(sql, (signal.binding, signal.instance, signal.name)).fetchone()
    if found is None:
        db.execute(
            "INSERT INTO signals (binding, instance, name, payload, at) VALUES (?, ?, ?, ?, ?)",
            (signal.binding, signal.instance, signal.name, signal.payload, now),
        )
        return
    db.execute(_READY, (signal.payload, now, now, found[0]))
    db.execute(
        "INSERT INTO audit (cid, at, event, detail) VALUES (?, ?, 'signal received', ?)",
        (found[0], now, repr(signal.name)),
    )


class _Changed(Exception):
    """An update's row was not at the revision its turn read: the batch needs the fence."""


def write_batch(db: sqlite3.Connection, commits: Sequence[Commit]) -> set[int]:
    """Apply ``commits`` in one ``BEGIN IMMEDIATE ... COMMIT``; return the indexes of those
    refused by the revision fence (nothing of them is written).

    The batch is first written as if none were refused, each update checking its row's
    revision itself; only if one finds its row changed (rare: a cancellation or a retry
    raced a firing) is it written again after the fence's query. That saves the query in
    every other batch, and with it a wait for the GIL while the event loop is busy.
    """
    try:
        _in_transaction(db, lambda: _write(db, commits, fenced=True))
    except _Changed:
        pass
    else:
        return set()

    def fenced_write() -> set[int]:
        refused = _fence(db, commits)
        _write(db, [c for i, c in enumerate(commits) if i not in refused])
        return refused

    return _in_transaction(db, fenced_write)


def _in_transaction(db: sqlite3.Connection, work: Callable[[], R]) -> R:
    """``work()`` in one ``BEGIN IMMEDIATE ... COMMIT``, rolled back if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work()
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return result


def purge_finished(db: sqlite3.Connection, cutoff: tuple[float, Sequence[str]]) -> int:
    """Delete the final rows (of the given statuses) finished before the cutoff time, with
    their audit, and the call results stored before it, in one transaction; return how
    many rows.

    One call on the writer's thread, like ``write_batch``: run statement by statement from
    the event loop, the purge a system makes as it starts held the writer through one
    event-loop round per statement, and the first turns' commits waited behind it (about
    0.4 s while the loop ran a burst of turns).
    """
    finished_before, statuses = cutoff
    marks = ", ".join("?" * len(statuses))
    doomed = f"SELECT id FROM continuations WHERE status IN ({marks}) AND finished_at < ?"
    params = (*statuses, finished_before)

    def purge() -> int:
        db.execute(f"DELETE FROM audit WHERE cid IN ({doomed})", params)
        db.execute("DELETE FROM call_results WHERE at < ?", (finished_before,))
        return db.execute(f"DELETE FROM continuations WHERE id IN ({doomed})", params).rowcount

    return _in_transaction(db, purge)


def _execute_chunked(
    db: sqlite3.Connection, template: str, rows: Sequence[tuple[Any, ...]], row: str = ""
) -> int:
    """Run ``template`` over ``rows`` (see ``_chunked``); return how many rows it changed."""
    changed = 0
    for sql, params in _chunked(db, template, rows, row):
        changed += db.execute(sql, params).rowcount
    return changed


def _chunked(
    db: sqlite3.Connection, template: str, rows: Sequence[tuple[Any, ...]], row: str = ""
) -> Iterator[tuple[str, list[Any]]]:
    """``template`` run over ``rows`` as a few many-row statements: ``{rows}`` in it becomes
    one ``(?, ...)`` group (or ``row``) per row, and the parameters are flattened.

    Why not ``executemany``: the sqlite3 module lets go of the GIL for every row it steps,
    and while the event loop's thread is busy (firing turns) taking it back costs up to the
    interpreter's switch interval, 5 ms, each time. A commit of a few hundred rows took
    seconds that way. A many-row statement steps once. Statement sizes are powers of two, so
    a handful of texts serve every batch from the connection's statement cache.
    """
    if not rows:
        return
    width = len(rows[0])
    group = row or "(" + ", ".join("?" * width) + ")"
    limit = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width
    most = min(_MAX_ROWS, 1 << (limit.bit_length() - 1))
    start = 0
    while start < len(rows):
        size = min(most, 1 << ((len(rows) - start).bit_length() - 1))
        chunk = rows[start : start + size]
        yield _statement(template, group, size), [value for r in chunk for value in r]
        start += size


@functools.lru_cache(maxsize=256)
def _statement(template: str, group: str, size: int) -> str:
    return template.format(rows=", ".join([group] * size))
