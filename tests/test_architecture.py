"""Layers point one way: core (pure) <- io <- ingestion <- steps; a step never imports another
step."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
SHARED_GLUE = {"common", "forecasting"}  # modules in steps/ that serve several steps


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.startswith("pipeline")}


def modules(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


@pytest.mark.parametrize("path", modules("core"), ids=lambda p: p.name)
def test_core_takes_plain_values(path):
    allowed = ("pipeline.core", "pipeline.schema", "pipeline.errors")
    bad = sorted(m for m in imports(path) if not m.startswith(allowed))
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}: core must stay pure"


@pytest.mark.parametrize("path", modules("io"), ids=lambda p: p.name)
def test_io_never_reaches_up_into_steps(path):
    above = ("pipeline.steps", "pipeline.context", "pipeline.ingestion")
    bad = sorted(m for m in imports(path) if m.startswith(above))
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


@pytest.mark.parametrize("path", modules("steps"), ids=lambda p: p.name)
def test_a_step_never_imports_another_step(path):
    others = {m.split(".")[2] for m in imports(path) if m.startswith("pipeline.steps.")}
    bad = sorted(others - SHARED_GLUE - {path.stem})
    assert not bad, f"step {path.stem} imports step(s) {bad}"


def all_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


SHIPPED = [p for folder in ("pipeline", "serving", "grafana", "dags")
           for p in sorted((PACKAGE.parent / folder).rglob("*.py"))]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_the_product_never_imports_the_local_stack(path):
    """stack/ (supervisord, config rendering, the webhook) launches the product; nothing of
    the product, its DAGs or its dashboards depends on it."""
    bad = sorted(m for m in all_imports(path) if m == "stack" or m.startswith("stack."))
    assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad}"
