"""Which store a ``database`` argument means: a PostgreSQL URL, or else an SQLite file."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Final, cast

from .base import Store
from .sqlite import Durability, SQLiteStore

if TYPE_CHECKING:
    from .postgres import PostgresStore

POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


def is_postgres_url(database: object) -> bool:
    """Whether ``database`` names a PostgreSQL database rather than an SQLite file."""
    return isinstance(database, str) and database.startswith(POSTGRES_SCHEMES)


def create_store(database: str | os.PathLike[str], *, durability: Durability) -> Store:
    """The store for ``database``, not yet open: a ``PostgresStore`` for a
    ``postgresql://`` (or ``postgres://``) URL, an ``SQLiteStore`` for anything else (a
    file path, or ``":memory:"``)."""
    if is_postgres_url(database):
        # Imported here: asyncpg costs a sixth of a second to import, which an application
        # (or a CLI command) on SQLite need not pay.
        from .postgres import PostgresStore

        return PostgresStore(os.fspath(database), durability=durability)
    return SQLiteStore(os.fspath(database), durability=durability)


def postgres_store(store: Store) -> PostgresStore | None:
    """``store`` if it is a ``PostgresStore``, else None; without importing asyncpg, since a
    ``PostgresStore`` exists only once ``create_store`` imported its module."""
    module = sys.modules.get(f"{__package__}.postgres")
    if module is not None and isinstance(store, module.PostgresStore):
        return cast("PostgresStore", store)
    return None
