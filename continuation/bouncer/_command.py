"""``python -m continuation bouncer``: the bouncer service under uvicorn.

Secrets come from files, never from the command line (where ``ps`` would show them): the
token file holds one accepted token per line (blank lines and ``#`` comments are skipped;
several tokens let you rotate them), the signing key file holds the HMAC key.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from .._errors import InvalidArgumentError

DEFAULT_PORT = 8100


def add_bouncer_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m continuation bouncer``."""
    parser.add_argument("--db", required=True, metavar="FILE", help="the SQLite file of the waits")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    parser.add_argument(
        "--min-delay", type=float, default=60.0, help="shortest wait accepted, seconds"
    )
    parser.add_argument(
        "--max-delay", type=float, default=7200.0, help="longest wait accepted, seconds"
    )
    parser.add_argument(
        "--token-file", required=True, metavar="PATH", help="accepted bearer tokens, one a line"
    )
    parser.add_argument(
        "--signing-key-file", required=True, metavar="PATH", help="the callbacks' HMAC key"
    )
    parser.add_argument(
        "--callback-timeout",
        type=float,
        default=900.0,
        help="seconds one callback may take (the connection stays open meanwhile)",
    )
    parser.add_argument(
        "--give-up-after",
        type=float,
        default=86400.0,
        help="seconds past due after which a failing wait is marked failed",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )


def run_bouncer(args: argparse.Namespace) -> int:
    """Serve the bouncer until interrupted; return the exit code."""
    import uvicorn

    from ._app import create_bouncer_app

    app = create_bouncer_app(
        args.db,
        tokens=read_tokens(args.token_file),
        signing_key=read_secret(args.signing_key_file),
        min_delay=args.min_delay,
        max_delay=args.max_delay,
        callback_timeout=args.callback_timeout,
        give_up_after=args.give_up_after,
    )
    config = uvicorn.Config(
        app, host=args.host, port=args.port, lifespan="on", log_level=args.log_level
    )
    print(f"bouncer on http://{args.host}:{args.port}, waits in {args.db}", flush=True)
    asyncio.run(uvicorn.Server(config).serve())
    return 0


def read_tokens(path: str) -> list[str]:
    """The tokens in the file at ``path``: one a line, blank lines and ``#`` comments skipped."""
    lines = [line.strip() for line in _read(path, "token").splitlines()]
    tokens = [line for line in lines if line and not line.startswith("#")]
    if not tokens:
        raise InvalidArgumentError(f"the token file {path!r} holds no token")
    return tokens


def read_secret(path: str) -> bytes:
    """The signing key in the file at ``path``, without surrounding whitespace."""
    return _read(path, "signing key").strip().encode()


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"cannot read the {what} file {path!r}: {exc}") from exc
