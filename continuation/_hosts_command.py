"""``python -m continuation hosts --db postgresql://...``: the hosts sharing a database.

Each host renews its heartbeat every third of its lease period and reports its status
(actors in memory, leases held, work queued) after each renewal, through the coalescing
uploader; this command reads what they reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._errors import InvalidArgumentError
from ._store.postgres import PostgresStore
from ._store.postgres_hosts import HostDirectory, HostRow
from ._store.select import is_postgres_url

_STATE_STYLE = {"alive": "green", "lost": "red", "stopped": "dim"}


def add_hosts_arguments(parser: argparse.ArgumentParser) -> None:
    """``--db URL`` and ``--json``."""
    parser.add_argument(
        "--db", required=True, metavar="URL", help="the postgresql:// URL the hosts share"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per line instead of a table"
    )


def run_hosts(args: argparse.Namespace) -> int:
    """List the hosts registered in the database, alive ones first."""
    if not is_postgres_url(args.db):
        raise InvalidArgumentError(
            "hosts share a PostgreSQL database; an SQLite database has only the one process"
            f" that opens it (got {args.db!r})"
        )
    hosts = asyncio.run(_read_hosts(args.db))
    if args.json:
        for host in hosts:
            print(json.dumps(_json_of(host)))
    elif hosts:
        Console(soft_wrap=True).print(_table(hosts))
    else:
        print("no host has registered in this database yet")
    return 0


async def _read_hosts(url: str) -> list[HostRow]:
    store = PostgresStore(url)
    await store.open()
    try:
        hosts = await HostDirectory(store.pool).hosts()
    finally:
        await store.close()
    order = {"alive": 0, "lost": 1, "stopped": 2}
    return sorted(hosts, key=lambda host: (order[host.state], host.id))


def _json_of(host: HostRow) -> dict[str, object]:
    return {
        "id": host.id,
        "state": host.state,
        "address": host.address,
        "leases": host.leases,
        "started_at": host.started_at,
        "heartbeat_at": host.heartbeat_at,
        "heartbeat_age": round(host.now - host.heartbeat_at, 3),
        "stopped_at": host.stopped_at,
        "status": host.status,
    }


def _table(hosts: list[HostRow]) -> Table:
    table = Table(title="hosts", title_justify="left")
    for column in ("host", "state", "address", "leases", "actors", "queue", "heartbeat"):
        justify = "right" if column in ("leases", "actors", "queue") else "left"
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for host in hosts:
        status = host.status
        table.add_row(
            host.id,
            Text(host.state, style=_STATE_STYLE[host.state]),
            host.address or "-",
            str(host.leases),
            str(status.get("actors", "-")),
            str(status.get("queue", "-")),
            f"{_age(host.now - host.heartbeat_at)} ago",
        )
    return table


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{max(seconds, 0.0):.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"
