"""Ordered, versioned schema migrations for the PostgreSQL store, and the code that runs them.

Each entry upgrades the schema from the previous version; ``schema_version`` records where a
database is. A database newer than the last entry is refused rather than guessed at. Each
migration is one transaction under an advisory lock, so hosts starting together on one
database take turns instead of racing to create the same tables.

The schema mirrors the SQLite one (``migrations.py``): times are epoch seconds in ``DOUBLE
PRECISION``, blobs are ``BYTEA``. Text that is compared or ordered (ids, names, keys) uses
the ``"C"`` collation, so it sorts byte by byte as it does in SQLite whatever the database's
locale.
"""

from __future__ import annotations

from typing import Final, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .._errors import SchemaVersionError

Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""A connection of its own, or one lent by a pool: the store's code takes either."""

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: what SQLite's versions 1 and 2 hold together: actor state, continuations (with the
    # phase, work and outcome of strategies that hand work off the turn), the audit trail,
    # signals sent before anyone waited, and the answers to calls with an idempotency key.
    """
    CREATE TABLE actor_state (
        binding TEXT COLLATE "C" NOT NULL,
        instance TEXT COLLATE "C" NOT NULL,
        key TEXT COLLATE "C" NOT NULL,
        value BYTEA NOT NULL,
        PRIMARY KEY (binding, instance, key)
    );
    CREATE TABLE continuations (
        id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
        binding TEXT COLLATE "C" NOT NULL,
        instance TEXT COLLATE "C" NOT NULL,
        strategy TEXT COLLATE "C" NOT NULL,
        status TEXT COLLATE "C" NOT NULL,
        chain BYTEA NOT NULL,
        error_chain BYTEA,
        chain_text TEXT NOT NULL,
        error_chain_text TEXT,
        options TEXT NOT NULL,
        retry TEXT,
        due_at DOUBLE PRECISION,
        scheduled_at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        last_traceback TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
        key TEXT COLLATE "C",
        cron TEXT,
        version TEXT NOT NULL,
        cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
        revision BIGINT NOT NULL DEFAULT 0,
        phase TEXT COLLATE "C",
        work BYTEA,
        outcome BYTEA,
        wait_name TEXT COLLATE "C"
    );
    CREATE INDEX continuations_due ON continuations (due_at, id) WHERE status = 'pending';
    CREATE INDEX continuations_actor ON continuations (binding, instance, status);
    CREATE INDEX continuations_finished ON continuations (finished_at)
        WHERE finished_at IS NOT NULL;
    CREATE UNIQUE INDEX continuations_key ON continuations (binding, instance, key)
        WHERE key IS NOT NULL AND status = 'pending' AND NOT cancel_requested;
    CREATE INDEX continuations_waiting ON continuations (strategy, id)
        WHERE status = 'pending' AND phase = 'waiting';
    CREATE INDEX continuations_signal ON continuations (binding, instance, wait_name, id)
        WHERE status = 'pending' AND phase = 'waiting' AND wait_name IS NOT NULL;
    CREATE TABLE audit (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        cid TEXT COLLATE "C" NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        event TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX audit_cid ON audit (cid, seq);
    CREATE TABLE signals (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        binding TEXT COLLATE "C" NOT NULL,
        instance TEXT COLLATE "C" NOT NULL,
        name TEXT COLLATE "C" NOT NULL,
        payload BYTEA NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX signals_waiting ON signals (binding, instance, name, seq);
    CREATE TABLE call_results (
        binding TEXT COLLATE "C" NOT NULL,
        instance TEXT COLLATE "C" NOT NULL,
        key TEXT COLLATE "C" NOT NULL,
        outcome BYTEA NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (binding, instance, key)
    );
    CREATE INDEX call_results_at ON call_results (at);
    """,
    # 2: many hosts sharing one database. ``hosts`` is who is alive (and where other hosts
    # reach it); ``leases`` says which host runs which actor, under which epoch, until when
    # (database time): a commit is accepted only under the current epoch of a live lease.
    """
    CREATE TABLE hosts (
        id TEXT COLLATE "C" PRIMARY KEY,
        address TEXT,
        started_at DOUBLE PRECISION NOT NULL,
        heartbeat_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        stopped_at DOUBLE PRECISION,
        status JSONB NOT NULL DEFAULT '{}'
    );
    CREATE TABLE leases (
        binding TEXT COLLATE "C" NOT NULL,
        instance TEXT COLLATE "C" NOT NULL,
        host TEXT COLLATE "C" NOT NULL,
        epoch BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (binding, instance)
    );
    CREATE INDEX leases_host ON leases (host);
    """,
)

LATEST_VERSION: Final = len(MIGRATIONS)

# In the schema tables are created in, not wherever the search path would find one.
_SCHEMA_VERSION_TABLE: Final = "SELECT to_regclass(format('%I.schema_version', current_schema()))"

MIGRATION_LOCK: Final = 0x6F63616E
"""The first key of the advisory lock migrations run under (the second is the schema's), so
that other users of advisory locks in the same database do not collide with it."""


async def migrate(
    connection: Connection, *, what: str, migrations: tuple[str, ...] = MIGRATIONS
) -> None:
    """Bring the schema on ``connection``'s search path up to the last of ``migrations``,
    one transaction per version.

    Raises:
        SchemaVersionError: ``what`` was written by a newer version of the library.
        asyncpg.PostgresError: a statement failed (the caller wraps it).
    """
    latest = len(migrations)
    while True:
        async with connection.transaction():
            await connection.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))", MIGRATION_LOCK
            )
            # Checked under the lock: another host may have migrated while this one waited.
            if await connection.fetchval(_SCHEMA_VERSION_TABLE) is None:
                await connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            current = await connection.fetchval(
                "SELECT coalesce(max(version), 0) FROM schema_version"
            )
            if current > latest:
                raise SchemaVersionError(
                    f"{what} has schema version {current}, newer than the {latest} this version"
                    " of the library understands; upgrade the library"
                )
            if current == latest:
                return
            await connection.execute(migrations[current])
            await connection.execute(
                "INSERT INTO schema_version (version) VALUES ($1)", current + 1
            )
