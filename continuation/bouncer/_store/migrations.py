"""Ordered, versioned schema migrations of the bouncer's database.

Separate from ``continuation/_store/migrations.py``: the bouncer keeps its own file, so the two
schemas evolve independently. Each entry upgrades from the previous version; a database newer
than the last entry is refused rather than guessed at.
"""

from __future__ import annotations

from typing import Final

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: waits, due rows found through an index on the next attempt's time.
    """
    CREATE TABLE waits (
        id TEXT NOT NULL PRIMARY KEY,
        key TEXT,
        callback TEXT NOT NULL,
        payload TEXT NOT NULL,
        due_at REAL NOT NULL,
        next_at REAL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX waits_next ON waits (next_at, id) WHERE status = 'pending';
    CREATE UNIQUE INDEX waits_key ON waits (key) WHERE key IS NOT NULL AND status != 'cancelled';
    """,
)

LATEST_VERSION: Final = len(MIGRATIONS)
