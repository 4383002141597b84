"""The packages depend on each other in one direction only.

``operation_chain`` imports neither ``rpc`` nor ``continuation``; ``rpc`` imports only
``operation_chain``; ``continuation`` may import both (see DESIGN.md). The check reads every
``.py`` file with ``ast`` instead of importing it, so it also sees imports under
``if TYPE_CHECKING:``, inside functions, and in modules no test happens to import.

Relative imports (``from ._chain import X``) stay inside their own package and are allowed.
``importlib.import_module("rpc")`` and ``__import__("rpc")`` with a literal name are caught
too, so the rule cannot be sidestepped by accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN: dict[str, frozenset[str]] = {
    "operation_chain": frozenset({"rpc", "continuation"}),
    "rpc": frozenset({"continuation"}),
    "continuation": frozenset(),
}

_DYNAMIC_IMPORTERS = frozenset({"import_module", "__import__"})


def _top_level(module: str) -> str:
    return module.partition(".")[0]


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every absolute module name the tree imports, with its line number."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module is not None:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if (
                name in _DYNAMIC_IMPORTERS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and not first.value.startswith(".")
            ):
                found.append((node.lineno, first.value))
    return found


def find_violations(source: str, filename: str, package: str) -> list[str]:
    """Describe each import in ``source`` that the layering forbids for ``package``."""
    tree = ast.parse(source, filename=filename)
    forbidden = FORBIDDEN[package]
    return [
        f"{filename}:{lineno}: {package} must not import {module}"
        for lineno, module in _imported_modules(tree)
        if _top_level(module) in forbidden
    ]


def _package_files(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_layering(package: str) -> None:
    files = _package_files(package)
    assert files, f"no .py files found under {package}/; is the repository layout intact?"
    violations: list[str] = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        violations += find_violations(source, str(path.relative_to(REPO_ROOT)), package)
    assert not violations, "layering violated:\n" + "\n".join(violations)


@pytest.mark.parametrize(
    ("package", "source"),
    [
        ("operation_chain", "import rpc"),
        ("operation_chain", "import rpc.server as server"),
        ("operation_chain", "from rpc import create_rpc_client"),
        ("operation_chain", "from rpc._transports.base import Transport"),
        ("operation_chain", "from continuation import Actor"),
        ("operation_chain", "import json, continuation._actor"),
        ("operation_chain", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n import rpc"),
        ("operation_chain", "def f():\n    from continuation import Actor\n    return Actor"),
        ("operation_chain", "import importlib\nimportlib.import_module('rpc.server')"),
        ("rpc", "__import__('continuation')"),
        ("rpc", "from continuation._system import ActorSystem"),
    ],
)
def test_checker_detects_violation(package: str, source: str) -> None:
    violations = find_violations(source, "synthetic.py", package)
    assert len(violations) == 1
    assert f"{package} must not import" in violations[0]


def test_checker_reports_file_and_line() -> None:
    source = "import json\n\nfrom rpc import server\n"
    assert find_violations(source, "pkg/mod.py", "operation_chain") == [
        "pkg/mod.py:3: operation_chain must not import rpc"
    ]


@pytest.mark.parametrize(
    ("package", "source"),
    [
        ("operation_chain", "from . import _chain\nfrom ._codec import encode"),
        ("operation_chain", "import rpcx\nimport continuations\nfrom rpc_tools import x"),
        ("operation_chain", "import importlib\nimportlib.import_module('.rpc', __package__)"),
        ("rpc", "from operation_chain import OperationProxy\nfrom .._x import y"),
        ("continuation", "import rpc\nfrom operation_chain import chain_of"),
    ],
)
def test_checker_allows_permitted_imports(package: str, source: str) -> None:
    assert find_violations(source, "synthetic.py", package) == []
