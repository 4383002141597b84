"""The command line: ``python -m continuation COMMAND --db DATABASE ...``.

Inspect and repair a database from outside the application that owns it, an SQLite file or
a PostgreSQL database::

    python -m continuation ls --db app.db --status dead
    python -m continuation show --db app.db 3f2a...
    python -m continuation retry --db postgresql://app@db.internal/app 3f2a...

Each subcommand is a ``Command`` in ``COMMANDS``: a name, a function that adds its arguments
to its parser, and a function that runs it and returns the exit code. A new subcommand is one
more entry; one that needs heavy dependencies (a server) should import them in its ``run``,
so that ``ls`` stays quick.

Exit codes: 0 on success; 1 for an expected failure (unknown id, wrong status, a missing or
unreadable database), reported as one line on stderr; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._clock import ManualClock
from ._errors import ContinuationError
from ._hosts_command import add_hosts_arguments, run_hosts
from ._records import ContinuationInfo, ContinuationStatus
from ._store.select import is_postgres_url
from ._system import ActorSystem
from .bouncer._command import add_bouncer_arguments, run_bouncer

PROG: Final = "python -m continuation"
_DATABASE_HELP: Final = "SQLite file or postgresql:// URL"
_TRUNCATE_AT: Final = 48
_STATUS_STYLES: Final = {
    ContinuationStatus.PENDING: "yellow",
    ContinuationStatus.RUNNING: "cyan",
    ContinuationStatus.COMPLETED: "green",
    ContinuationStatus.DEAD: "bold red",
    ContinuationStatus.CANCELLED: "dim",
    ContinuationStatus.VERSION_MISMATCH: "magenta",
}

DatabaseAction = Callable[[ActorSystem, argparse.Namespace], Awaitable[int]]


class CommandError(Exception):
    """An expected failure of a command: ``main`` prints the message, without a traceback,
    and exits with 1."""


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand of ``python -m continuation``.

    Attributes:
        name: what the user types, e.g. ``"ls"``.
        help: one line for ``--help``.
        add_arguments: adds the subcommand's arguments to its parser.
        run: runs the subcommand and returns the exit code. It raises ``CommandError`` or a
            ``ContinuationError`` for failures the user should see as one line.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (``sys.argv[1:]`` by default); return the exit code.

    Usage errors and ``--help`` return argparse's code instead of exiting, so that the
    function can be called in-process (tests, other tools) like any other.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (CommandError, ContinuationError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


def build_parser(commands: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    """The argument parser with a subparser for each of ``commands`` (``COMMANDS`` by
    default); the chosen command's ``run`` is left in the ``run`` attribute of the result."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve an ActorSystem over RPC, or inspect and repair the continuations"
        " stored in its database.",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS if commands is None else commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


# -- database commands -------------------------------------------------------------------


def on_database(action: DatabaseAction) -> Callable[[argparse.Namespace], int]:
    """A ``run`` that opens the ``--db`` file, awaits ``action`` with it, and closes it.

    The system knows no actor classes and stands on a manual clock, so it fires nothing:
    on the real clock its scheduler would halt every due continuation as belonging to an
    unregistered actor. Cancel and retry still commit, straight to the database.
    """

    def run(args: argparse.Namespace) -> int:
        database = _existing_database(args.db)

        async def session() -> int:
            async with ActorSystem(database, clock=ManualClock()) as system:
                return await action(system, args)

        return asyncio.run(session())

    return run


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--db DATABASE`` option every database command takes."""
    parser.add_argument("--db", required=True, metavar="DATABASE", help=_DATABASE_HELP)


def _existing_database(db: str) -> str | Path:
    if is_postgres_url(db):
        return db  # the server says whether it exists; opening creates only the tables
    # Opening a path that does not exist would create an empty database there.
    path = Path(db)
    if not path.exists():
        raise CommandError(f"no database at {db!r}: the file does not exist")
    if not path.is_file():
        raise CommandError(f"{db!r} is not a database file")
    return path


def _add_ls_arguments(parser: argparse.ArgumentParser) -> None:
    add_database_argument(parser)
    parser.add_argument(
        "--status",
        action="append",
        choices=[status.value for status in ContinuationStatus],
        help="only continuations in this status; repeat the option for several",
    )
    parser.add_argument("--binding", help="only continuations of actors with this binding")
    parser.add_argument("--instance", help="only continuations of actors with this instance id")
    parser.add_argument(
        "--limit", type=_positive_int, default=100, help="show at most this many (default 100)"
    )
    _add_json_argument(parser, "print one JSON object per line instead of a table")


def _add_id_arguments(parser: argparse.ArgumentParser) -> None:
    add_database_argument(parser)
    parser.add_argument("id", metavar="CID", help="the continuation id")


def _add_show_arguments(parser: argparse.ArgumentParser) -> None:
    _add_id_arguments(parser)
    _add_json_argument(parser, "print one JSON object instead of tables")


def _add_json_argument(parser: argparse.ArgumentParser, description: str) -> None:
    parser.add_argument("--json", action="store_true", help=description)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


async def _ls(system: ActorSystem, args: argparse.Namespace) -> int:
    found = await system.continuations(
        status=args.status, binding=args.binding, instance=args.instance, limit=args.limit
    )
    if args.json:
        for info in found:
            print(_json_of(info, audit=False))
    elif found:
        _console().print(_ls_table(found))
    else:
        print("no continuations match")
    if len(found) == args.limit:
        print(f"showing the first {args.limit}; raise --limit to see more", file=sys.stderr)
    return 0


async def _show(system: ActorSystem, args: argparse.Namespace) -> int:
    info = await system.continuation(args.id)
    if args.json:
        print(_json_of(info, audit=True))
        return 0
    console = _console()
    console.print(_fields_table(info))
    console.print(_audit_table(info))
    if info.last_traceback:
        console.print("\nTraceback of the last failure:")
        console.print(info.last_traceback.rstrip("\n"), soft_wrap=True)
    return 0


async def _cancel(system: ActorSystem, args: argparse.Namespace) -> int:
    await system.cancel(args.id)
    return await _print_status(system, args.id)


async def _retry(system: ActorSystem, args: argparse.Namespace) -> int:
    await system.retry(args.id)
    return await _print_status(system, args.id)


async def _print_status(system: ActorSystem, cid: str) -> int:
    info = await system.continuation(cid)
    print(f"{cid}: {_status_text(info)}")
    return 0


# -- rendering ---------------------------------------------------------------------------


def _console() -> Console:
    # Chain texts and errors are user data: "[b]" or ":smile:" in them is text, not styling.
    return Console(markup=False, emoji=False, highlight=False)


def _ls_table(found: Sequence[ContinuationInfo]) -> Table:
    table = Table("id", "actor", "status", "due (UTC)", "attempts", "chain", "last error")
    table.columns[0].no_wrap = True
    table.columns[4].justify = "right"
    for info in found:
        table.add_row(
            info.id,
            f"{info.binding}/{info.instance}",
            _styled_status(info),
            _iso(info.due_at),
            str(info.attempts),
            _truncate(info.chain),
            _truncate(info.last_error or "-"),
        )
    return table


def _fields_table(info: ContinuationInfo) -> Table:
    table = Table("field", "value", title=f"continuation {info.id}")
    for field in dataclasses.fields(info):
        if field.name == "status":
            table.add_row(field.name, _styled_status(info))
        elif field.name not in ("audit", "last_traceback"):
            table.add_row(field.name, _text(getattr(info, field.name)))
    return table


def _audit_table(info: ContinuationInfo) -> Table:
    table = Table("at (UTC)", "event", "detail", title="audit trail")
    for event in info.audit:
        table.add_row(_iso(event.at), event.event, event.detail or "-")
    return table


def _styled_status(info: ContinuationInfo) -> Text:
    return Text(_status_text(info), style=_STATUS_STYLES[info.status])


def _status_text(info: ContinuationInfo) -> str:
    return f"{info.status} (cancel requested)" if info.cancel_requested else str(info.status)


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _iso(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _truncate(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _TRUNCATE_AT else flat[: _TRUNCATE_AT - 1] + "…"


def _json_of(info: ContinuationInfo, *, audit: bool) -> str:
    data = dataclasses.asdict(info)
    if not audit:
        # Listing does not read audit trails; an empty list would claim there are none.
        del data["audit"]
    return json.dumps(data, default=_json_default, ensure_ascii=False)


def _json_default(value: datetime) -> str:
    # Every non-JSON value in a ContinuationInfo is an aware UTC datetime.
    return value.isoformat()


# -- serve -------------------------------------------------------------------------------


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="an ActorSystem, or a function returning one (module path or path/to/file.py)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=_positive_int, default=8000, help="port to listen on")
    parser.add_argument(
        "--db", metavar="DATABASE", help=f"{_DATABASE_HELP}, passed to the function as database="
    )
    parser.add_argument("--prefix", default="/rpc", help="path of the RPC routes")
    parser.add_argument(
        "--host-id",
        help="this host's id among hosts sharing a PostgreSQL database (unique among live"
        " hosts; keep it across restarts)",
    )
    parser.add_argument(
        "--advertise",
        metavar="URL",
        help="the RPC URL other hosts forward calls to (default ws://HOST:PORT/PREFIX)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )


def _serve(args: argparse.Namespace) -> int:
    from ._serve import build_system, load_target, serve

    system = build_system(load_target(args.target), args.db)
    if args.host_id is not None:
        system.host_id = args.host_id
    options = {"host": args.host, "port": args.port, "prefix": args.prefix}
    asyncio.run(serve(system, log_level=args.log_level, advertise=args.advertise, **options))
    return 0


COMMANDS: Final[tuple[Command, ...]] = (
    Command("ls", "list continuations, oldest first", _add_ls_arguments, on_database(_ls)),
    Command(
        "show",
        "show one continuation with its audit trail",
        _add_show_arguments,
        on_database(_show),
    ),
    Command("cancel", "cancel a pending continuation", _add_id_arguments, on_database(_cancel)),
    Command(
        "retry",
        "re-queue a dead or version_mismatch continuation, due now",
        _add_id_arguments,
        on_database(_retry),
    ),
    Command(
        "serve",
        "serve an ActorSystem over HTTP and WebSocket RPC, with its scheduler running",
        _add_serve_arguments,
        _serve,
    ),
    Command(
        "hosts",
        "list the hosts sharing a PostgreSQL database, with their heartbeats and status",
        add_hosts_arguments,
        run_hosts,
    ),
    Command(
        "bouncer",
        "run the bouncer: waits on behalf of hosts that cannot keep a timer, then calls back",
        add_bouncer_arguments,
        run_bouncer,
    ),
)
