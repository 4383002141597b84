"""``python -m continuation serve``: an ActorSystem over RPC, with its scheduler running."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from ._errors import InvalidArgumentError
from ._system import ActorSystem


def load_target(spec: str) -> object:
    """The object ``spec`` names: ``package.module:attr`` or ``path/to/file.py:attr``."""
    where, colon, attr = spec.rpartition(":")
    if not colon or not where or not attr:
        raise InvalidArgumentError(f"{spec!r} is not MODULE:ATTR (e.g. myapp.actors:system)")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise InvalidArgumentError(f"no such file: {where}")
        name = f"_served_{path.stem}"
        loader = importlib.util.spec_from_file_location(name, path)
        assert loader is not None
        assert loader.loader is not None
        module = importlib.util.module_from_spec(loader)
        sys.modules[name] = module
        loader.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise InvalidArgumentError(f"cannot import {where!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InvalidArgumentError(f"{where} has no attribute {attr!r}") from None


def build_system(target: object, database: str | None) -> ActorSystem:
    """An ``ActorSystem`` from what ``serve`` was pointed at: the system itself, or a
    function returning one (called with ``database=`` when ``--db`` is given)."""
    if isinstance(target, ActorSystem):
        if database is not None:
            raise InvalidArgumentError(
                "--db needs a function that creates the system (MODULE:create_system), since"
                " an existing ActorSystem already has its database"
            )
        return target
    if callable(target):
        try:
            system = target() if database is None else target(database=database)
        except TypeError as exc:
            given = "no arguments" if database is None else "database=..."
            raise InvalidArgumentError(f"{target!r} cannot be called with {given}: {exc}") from exc
        if isinstance(system, ActorSystem):
            return system
        raise InvalidArgumentError(
            f"{target!r} returned {type(system).__name__}, not an ActorSystem"
        )
    raise InvalidArgumentError(
        f"serve needs an ActorSystem or a function returning one, not {type(target).__name__}"
    )


async def serve(
    system: ActorSystem,
    *,
    host: str,
    port: int,
    prefix: str,
    log_level: str,
    advertise: str | None = None,
) -> None:
    """Serve ``system`` with uvicorn until interrupted; the system starts before the first
    request and closes, committing what already ran, before the process exits. A system with
    a ``BouncerTimer`` also gets its wake endpoint, at ``/bouncer/wake``.

    Other hosts sharing the database forward calls to ``advertise`` (by default the
    WebSocket URL of the address served, unless the system was given one)."""
    import uvicorn

    if system.address is None or advertise is not None:
        system.address = advertise or f"ws://{host}:{port}{prefix}"

    from rpc.server import create_rpc_app

    served: Any = create_rpc_app(system, prefix=prefix)
    if system.timer is not None:
        from .bouncer._wake import with_wake_endpoint

        # The bouncer's callbacks wake the system at /bouncer/wake (docs/bouncer.md).
        served = with_wake_endpoint(served, system)
    app = _Lifespan(served, system)
    # uvicorn's default WebSocket implementation sits on the deprecated websockets.legacy.
    config = uvicorn.Config(
        app, host=host, port=port, ws="websockets-sansio", lifespan="on", log_level=log_level
    )
    await uvicorn.Server(config).serve()


class _Lifespan:
    """Starts and closes the system with the server: uvicorn runs the shutdown half on
    SIGINT/SIGTERM before it exits, which a ``finally`` after ``serve()`` would not see."""

    def __init__(self, app: Any, system: ActorSystem) -> None:
        self._app = app
        self._system = system

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self._app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._system.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                print(f"serving {self._system!r}", flush=True)
                await send({"type": "lifespan.startup.complete"})
            else:
                await self._system.aclose()
                print("closed the actor system", flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
