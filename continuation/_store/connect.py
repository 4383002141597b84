"""Opening an SQLite database the way every store here does: WAL, a writer and a reader
connection, and ordered, versioned migrations."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import aiosqlite

from .._errors import SchemaVersionError, StoreError

A = TypeVar("A")
R = TypeVar("R")


async def open_sqlite(
    path: str, *, synchronous: str, migrations: Sequence[str], what: str
) -> tuple[aiosqlite.Connection, aiosqlite.Connection | None]:
    """The writer connection (migrated to the last of ``migrations``) and, for a file, a
    read-only reader connection: in WAL mode a reader never waits for a commit's fsync.

    Raises:
        StoreError: the file cannot be opened, or is not a database.
        SchemaVersionError: ``what`` was written by a newer version.
    """
    db = reader = None
    try:
        # aiosqlite leaves its worker thread behind when connecting fails, so find out
        # first, in a throwaway thread, whether the file can be opened at all.
        await asyncio.to_thread(_probe, path)
        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute(f"PRAGMA synchronous = {synchronous}")
        await db.execute("PRAGMA busy_timeout = 5000")
        await _migrate(db, migrations, what)
        if path not in ("", ":memory:"):
            reader = await aiosqlite.connect(path, isolation_level=None)
            await reader.execute("PRAGMA query_only = ON")
            await reader.execute("PRAGMA busy_timeout = 5000")
    except BaseException as exc:
        for connection in (reader, db):
            if connection is not None:
                await connection.close()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"cannot open {what}: {exc}") from exc
        raise
    return db, reader


async def _migrate(db: aiosqlite.Connection, migrations: Sequence[str], what: str) -> None:
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    async with db.execute("SELECT MAX(version) FROM schema_version") as cursor:
        row = await cursor.fetchone()
    current = int(row[0]) if row and row[0] is not None else 0
    latest = len(migrations)
    if current > latest:
        raise SchemaVersionError(
            f"{what} has schema version {current}, newer than the {latest} this version of"
            " the library understands; upgrade the library"
        )
    for version in range(current + 1, latest + 1):
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in migrations[version - 1].split(";"):
                if statement.strip():
                    await db.execute(statement)
            await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise


def _probe(path: str) -> None:
    sqlite3.connect(path).close()


async def on_writer_thread(
    db: aiosqlite.Connection, work: Callable[[sqlite3.Connection, A], R], argument: A
) -> R:
    """Run ``work(connection, argument)`` on ``db``'s own thread, in one hop.

    aiosqlite runs each statement as its own hop; a transaction of many statements run that
    way waits for the event loop at every one. This uses aiosqlite's queue directly
    (``_execute`` and ``_conn``, internal: pyproject.toml caps aiosqlite at the versions
    checked).
    """
    connection: sqlite3.Connection = db._conn
    run: Callable[..., Awaitable[R]] = db._execute
    return await run(work, connection, argument)
