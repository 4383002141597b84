"""The PostgreSQL store's writes: the effects of accepted turns, applied in one transaction.

The same rules as the SQLite store's ``_write``, kind by kind in the same order, with batches
sent as arrays (``unnest``) where the order of rows within a kind does not matter, and as
pipelined ``executemany`` where each row must see the ones before it (updates, which a batch
may repeat for one row; signals; cancellations). Taking or delivering a signal is one
statement each, so no other transaction can slip between its read and its write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final, TypeAlias

from .base import Commit, SignalSend
from .postgres_migrations import Connection

SIGNAL_LOCK: Final = 0x6F636173
"""The first key of the advisory locks on a signal name (the second is a hash of the actor
and the name); see ``_lock_signal_names``."""

_INSERT_CONTINUATIONS: Final = """
    INSERT INTO continuations (id, binding, instance, strategy, status, chain, error_chain,
        chain_text, error_chain_text, options, retry, due_at, scheduled_at, created_at,
        updated_at, key, cron, version, phase, work, wait_name)
    SELECT id, binding, instance, strategy, 'pending', chain, error_chain, chain_text,
        error_chain_text, options, retry, due_at, scheduled_at, created_at, created_at, key,
        cron, version, phase, work, wait_name
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bytea[],
        $7::text[], $8::text[], $9::text[], $10::text[], $11::float8[], $12::float8[],
        $13::float8[], $14::text[], $15::text[], $16::text[], $17::text[], $18::bytea[],
        $19::text[])
        AS new (id, binding, instance, strategy, chain, error_chain, chain_text,
            error_chain_text, options, retry, due_at, scheduled_at, created_at, key, cron,
            version, phase, work, wait_name)
"""
_UPDATE_CONTINUATION: Final = """
    UPDATE continuations SET status = $1, due_at = $2, scheduled_at = $3, attempts = $4,
        last_error = $5, last_traceback = $6, finished_at = $7, cancel_requested = $8,
        updated_at = $9, phase = $10, outcome = $11, revision = revision + 1
    WHERE id = $12
"""
_DELETE_STATE: Final = """
    DELETE FROM actor_state
    WHERE (binding, instance, key) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))
"""
_PUT_STATE: Final = """
    INSERT INTO actor_state (binding, instance, key, value)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[])
    ON CONFLICT (binding, instance, key) DO UPDATE SET value = excluded.value
"""
_PUT_RESULTS: Final = """
    INSERT INTO call_results (binding, instance, key, outcome, at)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::float8[])
    ON CONFLICT (binding, instance, key) DO UPDATE SET outcome = excluded.outcome, at = excluded.at
"""
_AUDIT: Final = """
    INSERT INTO audit (cid, at, event, detail)
    SELECT cid, at, event, detail
    FROM unnest($1::text[], $2::float8[], $3::text[], $4::text[]) WITH ORDINALITY
        AS event (cid, at, event, detail, n)
    ORDER BY n
"""
_WAIT_NAMES: Final = """
    SELECT id, binding, instance, wait_name FROM continuations
    WHERE id = ANY($1::text[]) AND wait_name IS NOT NULL
"""
_LOCK_SIGNAL_NAMES: Final = """
    SELECT pg_advisory_xact_lock($1, h)
    FROM (SELECT DISTINCT hashtext(name) AS h FROM unnest($2::text[]) AS name) AS names
    ORDER BY h
"""
# A waiter that begins waiting takes the oldest signal that arrived before it did.
_TAKE_BUFFERED_SIGNAL: Final = """
    WITH taken AS (
        DELETE FROM signals
        WHERE seq = (
            SELECT seq FROM signals WHERE binding = $2 AND instance = $3 AND name = $4
            ORDER BY seq LIMIT 1
        )
        RETURNING payload
    ), ready AS (
        UPDATE continuations SET phase = 'ready', outcome = taken.payload, due_at = $5,
            updated_at = $5, revision = revision + 1
        FROM taken WHERE id = $1
    )
    INSERT INTO audit (cid, at, event, detail)
    SELECT $1, $5, 'signal received', $6 FROM taken
"""
# A signal goes to the oldest continuation waiting for it, or waits in ``signals``.
_SEND_SIGNAL: Final = """
    WITH waiter AS (
        SELECT id FROM continuations
        WHERE binding = $1 AND instance = $2 AND wait_name = $3 AND status = 'pending'
            AND phase = 'waiting' AND NOT cancel_requested
        ORDER BY id LIMIT 1
        FOR UPDATE
    ), ready AS (
        UPDATE continuations SET phase = 'ready', outcome = $4, due_at = $5, updated_at = $5,
            revision = continuations.revision + 1
        FROM waiter WHERE continuations.id = waiter.id
        RETURNING continuations.id
    ), heard AS (
        INSERT INTO audit (cid, at, event, detail)
        SELECT id, $5, 'signal received', $6 FROM ready
    )
    INSERT INTO signals (binding, instance, name, payload, at)
    SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT FROM ready)
"""
_OWN_PENDING: Final = "id = $2 AND binding = $3 AND instance = $4 AND status = 'pending'"
_CANCEL_STATEMENTS: Final = (
    # A continuation with an error chain stays pending until ContinuationCancelled reaches it.
    "INSERT INTO audit (cid, at, event, detail) SELECT id, $1, 'cancel requested', NULL"
    f" FROM continuations WHERE {_OWN_PENDING} AND NOT cancel_requested"
    " AND error_chain IS NOT NULL",
    "UPDATE continuations SET cancel_requested = TRUE, attempts = 0, due_at = $1,"
    f" updated_at = $1, revision = revision + 1 WHERE {_OWN_PENDING}"
    " AND NOT cancel_requested AND error_chain IS NOT NULL",
    "INSERT INTO audit (cid, at, event, detail) SELECT id, $1, 'cancelled', NULL"
    f" FROM continuations WHERE {_OWN_PENDING} AND error_chain IS NULL",
    "UPDATE continuations SET status = 'cancelled', due_at = NULL, finished_at = $1,"
    f" updated_at = $1, revision = revision + 1 WHERE {_OWN_PENDING} AND error_chain IS NULL",
)

Waiter: TypeAlias = tuple[str, str, str, str, float]
"""A continuation that begins waiting for a signal: id, binding, instance, name, time."""


class _Batch:
    """The effects of a batch of commits, grouped by kind (one statement per kind)."""

    def __init__(self, commits: Sequence[Commit]) -> None:
        self.state: dict[tuple[str, str, str], bytes | None] = {}
        self.inserts: list[tuple[Any, ...]] = []
        self.updates: list[tuple[Any, ...]] = []
        self.events: list[tuple[str, float, str, str | None]] = []
        self.cancels: list[tuple[float, str, str, str]] = []
        self.waiters: list[Waiter] = []
        self.signals: list[tuple[SignalSend, float]] = []
        self.results: dict[tuple[str, str, str], tuple[bytes, float]] = {}
        self.rewaits: list[tuple[str, float]] = []
        self.due: float | None = None
        for commit in commits:
            self._add(commit)

    def _add(self, commit: Commit) -> None:
        b, i, now = commit.binding, commit.instance, commit.now
        for key, value in commit.writes.items():
            self.state[b, i, key] = value
        for new in commit.new:
            self.inserts.append(
                (new.id, new.binding, new.instance, new.strategy, new.chain, new.error_chain,
                 _text(new.chain_text), _text(new.error_chain_text), new.options, new.retry,
                 new.due_at,
                 now if new.due_at is None else new.due_at, now, new.key, new.cron,
                 new.version, new.phase, new.work, new.wait_name)
            )  # fmt: skip
            self._notice(new.due_at)
            if new.wait_name is not None:
                self.waiters.append((new.id, new.binding, new.instance, new.wait_name, now))
                self._notice(now)  # it may take a signal that is waiting, and be due now
        update = commit.update
        if update is not None:
            self.updates.append(
                (update.status, update.due_at, update.scheduled_at, update.attempts,
                 _text(update.last_error), _text(update.last_traceback), update.finished_at,
                 update.cancel_requested, now, update.phase, update.outcome, update.id)
            )  # fmt: skip
            self.events.extend(
                (update.id, now, event, _text(detail)) for event, detail in update.events
            )
            if update.status == "pending":
                self._notice(update.due_at)
                if update.phase == "waiting":
                    self.rewaits.append((update.id, now))
                    self._notice(now)
        self.cancels.extend((now, cid, b, i) for cid in commit.cancels)
        self.signals.extend((signal, now) for signal in commit.signals)
        if commit.cancels or commit.signals:
            self._notice(now)
        if commit.call_result is not None:
            key, outcome = commit.call_result
            self.results[b, i, key] = (outcome, now)
        self.events.extend((cid, now, event, _text(detail)) for cid, event, detail in commit.notes)

    def _notice(self, due: float | None) -> None:
        if due is not None and (self.due is None or due < self.due):
            self.due = due


async def write(connection: Connection, commits: Sequence[Commit]) -> float | None:
    """Apply the effects of ``commits`` as if one after another; return the earliest time
    at which something they stored is due (for the wake-up notice), if any.

    Statements are grouped by kind, so the order of kinds matters: storage (the last write
    of a key wins), updates of fired continuations (which free their dedup keys), new
    continuations, then cancellations (which may target new ones).
    """
    batch = _Batch(commits)
    await _write_state(connection, batch.state)
    if batch.updates:
        await connection.executemany(_UPDATE_CONTINUATION, batch.updates)
    if batch.inserts:
        await connection.execute(_INSERT_CONTINUATIONS, *_columns(batch.inserts, 19))
    if batch.results:
        rows = [(*key, *value) for key, value in batch.results.items()]
        await connection.execute(_PUT_RESULTS, *_columns(rows, 5))
    await _signal(connection, batch)
    if batch.events:
        await connection.execute(_AUDIT, *_columns(batch.events, 4))
    if batch.cancels:
        for statement in _CANCEL_STATEMENTS:
            await connection.executemany(statement, batch.cancels)
    return batch.due


async def _write_state(
    connection: Connection, state: dict[tuple[str, str, str], bytes | None]
) -> None:
    deletes = [key for key, value in state.items() if value is None]
    puts = [(*key, value) for key, value in state.items() if value is not None]
    if deletes:
        await connection.execute(_DELETE_STATE, *_columns(deletes, 3))
    if puts:
        await connection.execute(_PUT_STATE, *_columns(puts, 4))


async def _signal(connection: Connection, batch: _Batch) -> None:
    """New and renewed waiters take the signals buffered for them, then signals sent go to
    their waiters (or are buffered), in the order the turns made them."""
    waiters = list(batch.waiters)
    if batch.rewaits:
        # A signal waiter waiting again (after a timeout, or a retry) takes what arrived in
        # between, as a new waiter would.
        ids = [cid for cid, _ in batch.rewaits]
        names = {row[0]: tuple(row[1:]) for row in await connection.fetch(_WAIT_NAMES, ids)}
        waiters += [(cid, *names[cid], now) for cid, now in batch.rewaits if cid in names]
    if not waiters and not batch.signals:
        return
    await _lock_signal_names(
        connection,
        [(b, i, name) for _, b, i, name, _ in waiters]
        + [(s.binding, s.instance, s.name) for s, _ in batch.signals],
    )
    if waiters:
        await connection.executemany(
            _TAKE_BUFFERED_SIGNAL,
            [(*waiter, f"{waiter[3]!r}, sent before the wait began") for waiter in waiters],
        )
    if batch.signals:
        await connection.executemany(
            _SEND_SIGNAL,
            [
                (s.binding, s.instance, s.name, s.payload, now, repr(s.name))
                for s, now in batch.signals
            ],
        )


async def _lock_signal_names(connection: Connection, names: list[tuple[str, str, str]]) -> None:
    """Lock each (actor, signal name) for the rest of the transaction, in one order.

    Without it, a waiter committing on one host and a signal committing on another could
    each miss the other (neither sees the other's uncommitted row), leaving the signal
    buffered while its waiter waits forever. SQLite has one writer at a time and needs none.
    """
    keys = [json.dumps(name) for name in names]
    await connection.execute(_LOCK_SIGNAL_NAMES, SIGNAL_LOCK, keys)


def _text(text: str | None) -> str | None:
    """Free text (an error, a traceback, a rendered chain) as PostgreSQL can store it.

    PostgreSQL text cannot hold U+0000, which an exception's message may: written as it is,
    the firing that records the failure could never commit, and would fire again forever.
    """
    return text.replace("\x00", "\\x00") if text is not None and "\x00" in text else text


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as ``width`` column lists: the arrays an ``unnest`` statement takes."""
    columns: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns
