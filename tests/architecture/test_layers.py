"""The layers hold: import-linter's contracts (pyproject.toml), and ``aiohttp.web`` at the edge."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from importlinter import configuration
from importlinter.application.use_cases import lint_imports

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("gateway", "adapters", "store", "sdk/python/agent_gateway_sdk")
# The one production package that may serve HTTP.
HTTP_LAYER = ROOT / "gateway" / "http"


def _imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def test_every_import_linter_contract_is_kept() -> None:
    configuration.configure()  # what the lint-imports command does first: readers, contract types
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_logo=True)


def test_only_the_http_layer_imports_aiohttp_web() -> None:
    offenders = []
    for package in PRODUCTION:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.is_relative_to(HTTP_LAYER):
                continue
            for line, module in _imported_modules(ast.parse(path.read_text(), str(path))):
                if module == "aiohttp.web" or module.startswith(("aiohttp.web.", "aiohttp.web_")):
                    offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert offenders == []
