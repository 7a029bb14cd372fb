"""Imports point down only: gateway → provider → runtime, network (ARCHITECTURE.md).

Checked on the source text (every ``import``/``from`` of a faasd_py module), so a violation is
caught even in code no test executes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "faasd_py"

# package -> faasd_py packages it must never import
FORBIDDEN = {
    "runtime": {"gateway", "provider", "network", "build", "watchdog", "daemon", "cli"},
    "network": {"gateway", "provider", "runtime", "build", "watchdog", "daemon", "cli"},
    "provider": {"gateway", "daemon", "cli", "build", "watchdog"},
    "gateway": {"daemon", "cli", "build", "watchdog"},
    "build": {"gateway", "provider", "network", "daemon", "cli"},
}
LEAVES = {"types", "errors", "config"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m.split(".")[1] for m in found if m.startswith("faasd_py.") and len(m.split(".")) > 1}


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (PKG / package).rglob("*.py") if "_api" not in p.parts)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_downwards_only(package: str) -> None:
    bad = {
        str(p.relative_to(PKG)): sorted(_imports(p) & FORBIDDEN[package])
        for p in _modules(package)
        if _imports(p) & FORBIDDEN[package]
    }
    assert not bad, f"{package}/ imports upper layers: {bad}"


def test_leaf_modules_import_only_leaves() -> None:
    for leaf in LEAVES:
        assert _imports(PKG / f"{leaf}.py") <= LEAVES, leaf


def test_watchdog_is_stdlib_only() -> None:
    """It runs inside function images that have only a Python interpreter."""
    for p in _modules("watchdog"):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("faasd_py.") or node.module.startswith("faasd_py.watchdog"), p
