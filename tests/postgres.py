"""PostgreSQL for tests: the server named by ``OCAN_TEST_POSTGRES``, a fresh schema per test.

The server is reached once per session; when it cannot be, every test that asks for it is
skipped with the reason. Each test gets a schema of its own (``t_<random>``) and a URL
whose ``search_path`` selects it, so tests never see each other's rows; the schema is
dropped when the test ends.

Creating and dropping schemas, and reading or changing rows behind a store's back (as the
SQLite tests do with ``sqlite3``), go through ``PostgresAdmin``: one connection on a thread
with an event loop of its own, so sync tests and async tests (each on its own loop) use it
alike. Use it from a package's ``conftest.py``::

    from tests.postgres import fresh_database

    @pytest.fixture
    def database() -> Iterator[PostgresDatabase]:
        with fresh_database() as db:
            yield db
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import functools
import os
import secrets
import sqlite3
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from continuation._store.postgres import redact
from continuation._store.postgres_migrations import migrate

ENV = "OCAN_TEST_POSTGRES"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
T = TypeVar("T")
_AHEAD = 2  # migrated schemas kept ready: a short test need not wait for the next one


def server_url() -> str:
    """The URL of the test server: ``$OCAN_TEST_POSTGRES``, or a local default."""
    return os.environ.get(ENV) or DEFAULT_URL


def with_search_path(url: str, schema: str) -> str:
    """``url`` with its ``search_path`` parameter set to ``schema``."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "search_path"]
    query.append(("search_path", schema))
    return urlunsplit(parts._replace(query=urlencode(query)))


class PostgresAdmin:
    """A connection to the test server, run on a thread of its own.

    Schemas are made ahead and dropped behind, on that thread, while tests run: a test that
    wants a migrated schema usually finds one ready, and never waits for a drop.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="postgres-admin", daemon=True
        )
        self._thread.start()
        self._lock = asyncio.Lock()
        self._ready: collections.deque[Future[str]] = collections.deque()
        self._behind: list[Future[None]] = []
        self._connection: asyncpg.Connection[asyncpg.Record] | None = None
        try:
            # A drop that meets a lock (a test that left a connection open) fails, and says
            # so, rather than hanging every test after it.
            settings = {"lock_timeout": "10s"}
            self._connection = self.run(asyncpg.connect(url, timeout=5, server_settings=settings))
        except BaseException:
            self.close()
            raise

    def submit(self, work: Coroutine[Any, Any, T]) -> Future[T]:
        """Start ``work`` on the admin thread's loop."""
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    def run(self, work: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``work`` on the admin thread's loop and return its result."""
        return self.submit(work).result(timeout)

    def execute(self, sql: str, *args: Any, schema: str | None = None) -> str:
        """Run one statement (in ``schema``, if given); return its status, e.g. ``UPDATE 1``."""
        return self.run(self._in_schema(schema, "execute", sql, args))

    def fetch(self, sql: str, *args: Any, schema: str | None = None) -> list[asyncpg.Record]:
        """The rows of one query (in ``schema``, if given)."""
        return self.run(self._in_schema(schema, "fetch", sql, args))

    async def _in_schema(self, schema: str | None, method: str, sql: str, args: Any) -> Any:
        async with self._lock:
            connection = self._connection
            assert connection is not None
            async with connection.transaction():
                if schema is not None:
                    await connection.execute("SELECT set_config('search_path', $1, true)", schema)
                return await getattr(connection, method)(sql, *args)

    def create_schema(self, *, migrated: bool = False) -> str:
        """A new schema, empty or with the continuation store's tables; its name."""
        if not migrated:
            return self.run(self._create(migrated=False))
        while len(self._ready) <= _AHEAD:
            self._ready.append(self.submit(self._create(migrated=True)))
        return self._ready.popleft().result(60)

    async def _create(self, *, migrated: bool) -> str:
        name = f"t_{secrets.token_hex(6)}"
        async with self._lock:
            connection = self._connection
            assert connection is not None
            await connection.execute(f"CREATE SCHEMA {name}")
            if migrated:
                await connection.execute(f"SET search_path TO {name}")
                try:
                    await migrate(connection, what=f"schema {name}")
                finally:
                    await connection.execute("RESET search_path")
        return name

    def drop_schema(self, name: str) -> None:
        """Drop schema ``name`` and everything in it, in the background."""
        self._behind = [f for f in self._behind if not f.done() or f.exception()]
        self._behind.append(self.submit(self._drop(name)))

    async def _drop(self, name: str) -> None:
        async with self._lock:
            connection = self._connection
            assert connection is not None
            await connection.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")

    def close(self) -> None:
        """Finish the drops under way, drop the schema made ahead, and disconnect."""
        while self._ready:
            self.drop_schema(self._ready.popleft().result(60))
        for dropping in self._behind:
            dropping.result(60)
        connection, self._connection = self._connection, None
        if connection is not None:
            self.run(connection.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


@dataclass(frozen=True)
class PostgresDatabase:
    """One test's database: a schema of its own on the test server."""

    admin: PostgresAdmin
    schema: str

    @property
    def url(self) -> str:
        """The URL a store opens: the server's, with ``search_path`` set to the schema."""
        return with_search_path(self.admin.url, self.schema)

    def execute(self, sql: str, *args: Any) -> str:
        return self.admin.execute(sql, *args, schema=self.schema)

    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return self.admin.fetch(sql, *args, schema=self.schema)


def execute_behind(database: str, sql: str) -> None:
    """Run one statement on a test's database (an SQLite file, or the URL of a test schema)
    behind the back of the store using it, as another process would."""
    if database.startswith(("postgresql://", "postgres://")):
        database_of(database).execute(sql)
        return
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        connection.execute(sql)


def database_of(url: str) -> PostgresDatabase:
    """The test database a URL from ``PostgresDatabase.url`` names."""
    schema = dict(parse_qsl(urlsplit(url).query))["search_path"]
    return PostgresDatabase(postgres_admin(), schema)


@functools.cache
def _reach(url: str) -> PostgresAdmin | str:
    """The admin connection, or why the server cannot be reached; tried once a session."""
    try:
        admin = PostgresAdmin(url)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    atexit.register(admin.close)
    return admin


def postgres_admin() -> PostgresAdmin:
    """The admin connection to the test server; skips the test if there is no server."""
    url = server_url()
    reached = _reach(url)
    if isinstance(reached, str):
        pytest.skip(f"PostgreSQL is not reachable at {redact(url)}: {reached}; set {ENV}")
    return reached


@contextmanager
def fresh_database(*, migrated: bool = False) -> Iterator[PostgresDatabase]:
    """A new schema on the test server, dropped on exit; skips without a server.

    With ``migrated``, the schema already has the tables of the latest version, as a store
    opening it would create them (faster: made while the previous test ran); without, it
    is empty, for tests of opening and migrating.
    """
    admin = postgres_admin()
    database = PostgresDatabase(admin, admin.create_schema(migrated=migrated))
    try:
        yield database
    finally:
        admin.drop_schema(database.schema)
