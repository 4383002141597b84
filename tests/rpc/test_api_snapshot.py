"""The client API of ``rpc`` is pinned: names and signatures change only on purpose.

A failure here means a public name or signature changed. If that was intended, update the
snapshot in the same change, so the change is visible in review (and in the changelog).
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import rpc
import rpc.server
import rpc.testing

SIGNATURES: dict[str, str] = {
    "rpc.create_rpc_client": (
        "(binding: 'str', instance: 'str', *, transport: 'Transport',"
        " on_downstream: 'DownstreamHandler | None' = None, client_id: 'str | None' = None,"
        " timeout: 'float | None' = 30) -> 'RpcClient'"
    ),
    "rpc.RpcClient.aclose": "(self) -> 'None'",
    "rpc.Transport.handle_async_request": "(self, request: 'RpcRequest') -> 'RpcResponse'",
    "rpc.Transport.subscribe": (
        "(self, client_id: 'str', listener: 'DownstreamListener') -> 'Callable[[], None]'"
    ),
    "rpc.Transport.aclose": "(self) -> 'None'",
    "rpc.RpcRequest": "(binding: 'str', instance: 'str', payload: 'dict[str, Any]') -> None",
    "rpc.RpcResponse": "(status: 'int', payload: 'dict[str, Any]') -> None",
    "rpc.InProcessTransport": (
        "(app_or_host: 'Starlette | ActorHost', *, principal: 'Any' = None) -> 'None'"
    ),
    "rpc.HttpTransport": (
        "(url: 'str', *, headers: 'Mapping[str, str] | None' = None,"
        " client: 'httpx.AsyncClient | None' = None) -> 'None'"
    ),
    "rpc.WebSocketTransport": (
        "(url: 'str', *, headers: 'Mapping[str, str] | None' = None,"
        " backoff_base: 'float' = 0.1, backoff_max: 'float' = 10.0,"
        " open_timeout: 'float' = 10.0) -> 'None'"
    ),
    "rpc.server.create_rpc_app": (
        "(system: 'ActorHost', *, authenticate: 'Authenticate | None' = None,"
        " prefix: 'str' = '/rpc', redact_tracebacks: 'bool' = False,"
        " policy: 'ExecutionPolicy | None' = None) -> 'Starlette'"
    ),
    "rpc.testing.create_test_client": (
        "(system: 'ActorHost', binding: 'str', instance: 'str', *, principal: 'Any' = None,"
        " on_downstream: 'DownstreamHandler | None' = None, client_id: 'str | None' = None,"
        " timeout: 'float | None' = 30) -> 'RpcClient'"
    ),
}

MODULE_NAMES: dict[str, list[str]] = {
    "rpc.server": ["Authenticate", "create_rpc_app"],
    "rpc.testing": ["create_test_client"],
}

CLIENT_MEMBERS = ["aclose", "binding", "client_id", "closed", "instance", "proxy", "timeout"]


MODULES = {"rpc": rpc, "rpc.server": rpc.server, "rpc.testing": rpc.testing}


def _resolve(dotted: str) -> Any:
    """The object a dotted name in the snapshot refers to (``rpc.server.create_rpc_app``)."""
    for module_name in sorted(MODULES, key=len, reverse=True):
        if dotted == module_name:
            return MODULES[module_name]
        if dotted.startswith(f"{module_name}."):
            obj: Any = MODULES[module_name]
            for part in dotted[len(module_name) + 1 :].split("."):
                obj = getattr(obj, part)
            return obj
    raise AssertionError(f"{dotted} is in no snapshotted module")


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signature_matches_the_snapshot(name: str) -> None:
    assert str(inspect.signature(_resolve(name))) == SIGNATURES[name]


@pytest.mark.parametrize("module", sorted(MODULE_NAMES))
def test_module_exports_match_the_snapshot(module: str) -> None:
    assert _resolve(module).__all__ == MODULE_NAMES[module]


def test_the_client_has_exactly_the_pinned_public_members() -> None:
    client = rpc.create_rpc_client("c", "a", transport=rpc.HttpTransport("http://x/rpc"))
    members = sorted(name for name in dir(client) if not name.startswith("_"))
    assert members == CLIENT_MEMBERS


def test_create_rpc_app_reports_its_public_module() -> None:
    assert rpc.server.create_rpc_app.__module__ == "rpc.server"
    assert rpc.create_rpc_client.__module__ == "rpc"
