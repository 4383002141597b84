"""The exported names of each package are pinned, so the public API changes only on purpose.

Adding or removing a public name means editing the list here in the same change, which makes
the change visible in review. ``rpc``'s client signatures get their own snapshot once that
package exists.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from typing import Any

import pytest

EXPECTED_ALL: dict[str, list[str]] = {
    "operation_chain": [
        "CHAIN_VERSION",
        "DEFAULT_POLICY",
        "ERROR",
        "RESULT",
        "AwaitableResultError",
        "CallOp",
        "ChainLimitError",
        "ChainSecurityError",
        "ChainValidationError",
        "Codec",
        "CodecError",
        "DecodeError",
        "ExecutionPolicy",
        "GetOp",
        "ItemOp",
        "Marker",
        "MarkerNotInjectedError",
        "MixedRootsError",
        "Operation",
        "OperationChain",
        "OperationChainError",
        "OperationProxy",
        "RemoteError",
        "SignatureError",
        "UnsupportedTypeError",
        "chain_of",
        "decode",
        "dumps",
        "encode",
        "execute_operation_chain",
        "execute_operation_chain_async",
        "expose",
        "loads",
        "register_type",
    ],
    "rpc": [
        "ActorHost",
        "AuthenticationError",
        "BindingNotFoundError",
        "CallRef",
        "ChainRefusedError",
        "ClientClosedError",
        "ConnectionLostError",
        "DownstreamMessage",
        "HttpTransport",
        "InProcessTransport",
        "RequestRejectedError",
        "RpcClient",
        "RpcError",
        "RpcProxy",
        "RpcRequest",
        "RpcResponse",
        "RpcTimeoutError",
        "Transport",
        "TransportError",
        "WebSocketTransport",
        "create_rpc_client",
    ],
    "continuation": [
        "Actor",
        "ActorRef",
        "ActorStorage",
        "ActorSystem",
        "ActorUnavailableError",
        "AlarmInfo",
        "AlarmOptions",
        "AuditEvent",
        "BouncerTimer",
        "Clock",
        "CommitError",
        "Continuation",
        "ContinuationCancelled",
        "ContinuationChainError",
        "ContinuationError",
        "ContinuationInfo",
        "ContinuationNotFoundError",
        "ContinuationOptionsError",
        "ContinuationStateError",
        "ContinuationStatus",
        "FetchError",
        "FetchRequest",
        "FetchResponse",
        "InvalidArgumentError",
        "LeaseLostError",
        "ManualClock",
        "OutsideTurnError",
        "ProxyFetchOptions",
        "RemoteCallOptions",
        "RetryPolicy",
        "SchemaVersionError",
        "SignalOptions",
        "StoreError",
        "SystemClock",
        "SystemClosedError",
        "UnknownActorError",
    ],
    "continuation.bouncer": [
        "SIGNATURE_HEADER",
        "TIMESTAMP_HEADER",
        "WAKE_PATH",
        "Bouncer",
        "BouncerError",
        "BouncerRequestError",
        "BouncerTimer",
        "BouncerUnavailableError",
        "DelayOutOfRangeError",
        "SignatureError",
        "StaleSignatureError",
        "Wait",
        "WaitNotFoundError",
        "WaitRequest",
        "WaitStateError",
        "WaitStatus",
        "callback_body",
        "create_bouncer_app",
        "create_wake_route",
        "sign",
        "verify_signature",
    ],
}

PACKAGES = sorted(EXPECTED_ALL)


def isort_style_key(name: str) -> tuple[int, list[tuple[int, str | int]]]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then the rest.

    Within each group names sort naturally (``x2`` before ``x10``).
    """
    if len(name) > 1 and name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    natural = [(1, int(part)) if part.isdigit() else (0, part) for part in re.split(r"(\d+)", name)]
    return group, natural


def _public_module(package: str) -> types.ModuleType:
    return importlib.import_module(package)


@pytest.mark.parametrize("package", PACKAGES)
def test_all_matches_the_pinned_list(package: str) -> None:
    assert _public_module(package).__all__ == EXPECTED_ALL[package]


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_sorted(package: str) -> None:
    exported = _public_module(package).__all__
    assert exported == sorted(exported, key=isort_style_key)
    assert len(set(exported)) == len(exported), "duplicate names in __all__"


def test_pinned_lists_are_sorted() -> None:
    for names in EXPECTED_ALL.values():
        assert names == sorted(names, key=isort_style_key)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_exists(package: str) -> None:
    module = _public_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names missing attributes: {missing}"


def _is_future_feature(value: Any) -> bool:
    # ``from __future__ import annotations`` leaves a public ``annotations`` name behind.
    return type(value).__module__ == "__future__"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_public_name_is_left_out_of_all(package: str) -> None:
    # A name imported into __init__ without an underscore but not listed in __all__ is
    # usually a forgotten export (or an accidental one).
    module = _public_module(package)
    unlisted = [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and name not in module.__all__
        and not isinstance(value, types.ModuleType)
        and not _is_future_feature(value)
    ]
    assert not unlisted, f"{package} has public names not in __all__: {unlisted}"


@pytest.mark.parametrize("package", PACKAGES)
def test_exported_objects_report_the_package_as_their_module(package: str) -> None:
    # Users should see operation_chain.OperationChain in reprs, docs and tracebacks, not the
    # private module it happens to live in.
    module = _public_module(package)
    wrong = {}
    for name in module.__all__:
        value = getattr(module, name)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        owner = getattr(value, "__module__", "")
        inner = owner.split(".")[1:] if owner.startswith(f"{package}.") else []
        if any(part.startswith("_") for part in inner):
            wrong[name] = owner
    assert not wrong, f"set __module__ = {package!r} for: {wrong}"


@pytest.mark.parametrize("package", PACKAGES)
def test_star_import_gives_exactly_all(package: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"from {package} import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(EXPECTED_ALL[package])
