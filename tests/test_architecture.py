"""The layering is import-linter's contracts ([tool.importlinter] in pyproject.toml), run by
`make lint`: layers core <- io <- ingestion <- steps and serving <- the CLI, the stack launcher
and the dashboards; the steps independent of each other; serving imports nothing of the steps;
no circle. Here they run in `make test` too, and are shown to catch what they exist for: the
string checks they replace let ``from pipeline.steps import x`` through and never looked at
serving, grafana or the launcher.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from importlinter import api  # noqa: F401 (configures import-linter, as its CLI does)
from importlinter.application.use_cases import lint_imports

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
SHARED_GLUE = {"common", "forecasting"}  # modules in steps/ that serve several steps


def contracts() -> dict[str, dict]:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def test_every_contract_holds(capsys):
    passed = lint_imports(str(PYPROJECT), cache_dir=None, no_logo=True)
    report = capsys.readouterr().out
    assert passed, report[-4000:]
    assert f"Contracts: {len(contracts())} kept, 0 broken." in report


def test_every_step_is_in_the_independence_contract():
    """A new step joins the contract (or is declared shared glue here and in its name)."""
    steps = {p.stem for p in (REPO / "pipeline" / "steps").glob("*.py")} - {"__init__"}
    listed = {m.removeprefix("pipeline.steps.") for m in contracts()["steps"]["modules"]}
    assert listed == steps - SHARED_GLUE
    assert all(glue in contracts()["steps"]["name"] for glue in SHARED_GLUE)


def test_every_exception_is_named_and_explained():
    """An ignored import is an exception main still has: the line above says which and why."""
    lines = PYPROJECT.read_text().splitlines()
    for contract in contracts().values():
        for ignored in contract.get("ignore_imports", []):
            at = next(i for i, ln in enumerate(lines) if f'"{ignored}"' in ln)
            said = [lines[at]]
            while lines[at - 1].strip().startswith(("#", '"')):  # its comment, or its group's
                at -= 1
                said.append(lines[at])
            assert any("# EXCEPTION " in ln for ln in said), f"{ignored}: no named EXCEPTION"


def test_the_dag_files_never_import_the_local_stack():
    """dags/ is Airflow's DAG folder, not a package import-linter can read: its files are
    checked here (``import stack``, ``from stack import x``, ``from stack.y import z``)."""
    for path in sorted((REPO / "dags").glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        found = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
        found |= {node.module for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
        bad = sorted(m for m in found if m == "stack" or m.startswith("stack."))
        assert not bad, f"dags/{path.name} imports {bad}"


# what each contract exists to catch, written into a copy of the code
BREACHES = {
    "steps": ("pipeline/steps/predict.py", "from pipeline.steps import train"),
    "floors": ("pipeline/io/storage.py", "from pipeline import context"),
    "project": ("pipeline/core/aqi.py", "import serving.schemas"),
    "serving": ("serving/schemas.py", "from pipeline.steps import rollback"),
    "acyclic": ("pipeline/core/counts.py", "from pipeline.core import models"),
    "launcher": ("pipeline/settings.py", "from stack import supervisor"),
}


@pytest.mark.process
def test_each_contract_catches_what_it_exists_for(tmp_path):
    """`lint-imports` on a copy of the code with one forbidden import per contract: each
    contract breaks, naming the import (the old string check let the first one through)."""
    assert set(BREACHES) == set(contracts()), "every contract shows what it catches"
    for package in ("pipeline", "serving", "grafana", "stack"):
        shutil.copytree(REPO / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    clean = lint(tmp_path)
    assert clean.returncode == 0, clean.stdout[-3000:]
    for path, line in BREACHES.values():
        target = tmp_path / path
        target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    broken = lint(tmp_path)
    assert broken.returncode == 1
    report = broken.stdout
    assert f"Contracts: 0 kept, {len(BREACHES)} broken." in report, report[-3000:]
    for contract_id, (path, _) in BREACHES.items():
        importer = path.removesuffix(".py").replace("/", ".")
        named = (f"No cycles are allowed in {importer.rsplit('.', 1)[0]}" if contract_id ==
                 "acyclic" else importer)
        assert named in report, f"{contract_id}: {named} not in:\n{report[-3000:]}"


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-logo",
                           "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
