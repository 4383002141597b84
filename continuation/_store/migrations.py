"""Ordered, versioned schema migrations for the SQLite store.

Each entry upgrades the schema from the previous version; ``schema_version`` records where a
database is. A database newer than the last entry is refused rather than guessed at.
"""

from __future__ import annotations

from typing import Final

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: actor state, continuations, audit trail.
    """
    CREATE TABLE actor_state (
        binding TEXT NOT NULL,
        instance TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (binding, instance, key)
    ) WITHOUT ROWID;
    CREATE TABLE continuations (
        id TEXT NOT NULL PRIMARY KEY,
        binding TEXT NOT NULL,
        instance TEXT NOT NULL,
        strategy TEXT NOT NULL,
        status TEXT NOT NULL,
        chain BLOB NOT NULL,
        error_chain BLOB,
        chain_text TEXT NOT NULL,
        error_chain_text TEXT,
        options TEXT NOT NULL,
        retry TEXT,
        due_at REAL,
        scheduled_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        last_traceback TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL,
        key TEXT,
        cron TEXT,
        version TEXT NOT NULL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        revision INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX continuations_due ON continuations (due_at, id) WHERE status = 'pending';
    CREATE INDEX continuations_actor ON continuations (binding, instance, status);
    CREATE INDEX continuations_finished ON continuations (finished_at)
        WHERE finished_at IS NOT NULL;
    CREATE UNIQUE INDEX continuations_key ON continuations (binding, instance, key)
        WHERE key IS NOT NULL AND status = 'pending' AND cancel_requested = 0;
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        cid TEXT NOT NULL,
        at REAL NOT NULL,
        event TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX audit_cid ON audit (cid, seq);
    """,
    # 2: strategies that hand work off the turn (remote-call, proxy-fetch, signal). ``phase``
    # is NULL for alarms; 'waiting' while the work is out (due_at is then its timeout),
    # 'ready' once its outcome is stored, 'retry' until failed work is dispatched again.
    # Signals that arrive before anyone waits wait in ``signals``; ``call_results`` remembers
    # the answers to calls made with an idempotency key, for a repeated call.
    """
    ALTER TABLE continuations ADD COLUMN phase TEXT;
    ALTER TABLE continuations ADD COLUMN work BLOB;
    ALTER TABLE continuations ADD COLUMN outcome BLOB;
    ALTER TABLE continuations ADD COLUMN wait_name TEXT;
    CREATE INDEX continuations_waiting ON continuations (strategy, id)
        WHERE status = 'pending' AND phase = 'waiting';
    CREATE INDEX continuations_signal ON continuations (binding, instance, wait_name, id)
        WHERE status = 'pending' AND phase = 'waiting' AND wait_name IS NOT NULL;
    CREATE TABLE signals (
        seq INTEGER PRIMARY KEY,
        binding TEXT NOT NULL,
        instance TEXT NOT NULL,
        name TEXT NOT NULL,
        payload BLOB NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX signals_waiting ON signals (binding, instance, name, seq);
    CREATE TABLE call_results (
        binding TEXT NOT NULL,
        instance TEXT NOT NULL,
        key TEXT NOT NULL,
        outcome BLOB NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (binding, instance, key)
    ) WITHOUT ROWID;
    CREATE INDEX call_results_at ON call_results (at);
    """,
)

LATEST_VERSION: Final = len(MIGRATIONS)
