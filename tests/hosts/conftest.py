"""Fixtures for the many-host tests: a fresh PostgreSQL schema the hosts share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..postgres import fresh_database


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh schema on the test server (skips without one)."""
    with fresh_database() as database:
        yield database.url
