"""The side venvs' locks: hash-checked like requirements.lock, and MLServer's computes with the
very versions the pipeline and the Flask app use (the same forecasts, to 1e-9)."""

from __future__ import annotations

import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

SIDE = ("requirements-mlflow.lock", "requirements-mlserver.lock", "requirements-schemas.lock")


def pins(name: str) -> dict[str, str]:
    text = (REPO / name).read_text()
    found = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", text, flags=re.MULTILINE)
    return {canonicalize_name(n): v for n, v in found}


def forecast_pins() -> list[str]:
    """The packages the Makefile constrains MLServer's lock to (FORECAST_PINS)."""
    makefile = (REPO / "Makefile").read_text()
    return re.search(r"^FORECAST_PINS := (.+)$", makefile, re.MULTILINE).group(1).split("|")


@pytest.mark.parametrize("name", SIDE)
def test_every_side_pin_carries_a_hash(name):
    text = (REPO / name).read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", text.split("\n", 2)[2])
    assert len(blocks) == len(pins(name)) > 0
    assert all("--hash=sha256:" in block for block in blocks)


def test_setup_installs_the_side_locks_requiring_their_hashes():
    setup = (REPO / "scripts/setup.sh").read_text()
    assert '--require-hashes -r "$lock"' in setup  # side_venv DIR LOCK
    assert "side_venv .venv-mlflow requirements-mlflow.lock\n" in setup
    assert "side_venv .venv-mlserver requirements-mlserver.lock project\n" in setup
    assert "--require-hashes -r requirements-schemas.lock" in setup


def test_each_side_lock_covers_its_input():
    for stem in ("mlflow", "mlserver", "schemas"):
        locked = pins(f"requirements-{stem}.lock")
        for line in (REPO / f"requirements-{stem}.in").read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                req = Requirement(line)
                assert canonicalize_name(req.name) in locked, (stem, req.name)
                assert req.specifier.contains(locked[canonicalize_name(req.name)]), (stem, line)


def test_mlserver_computes_with_the_pipelines_versions():
    main, side = pins("requirements.lock"), pins("requirements-mlserver.lock")
    for name in forecast_pins():
        key = canonicalize_name(name)
        assert side[key] == main[key], f"{name}: {side[key]} in MLServer's lock, {main[key]} " \
                                       "in requirements.lock: run `make lock-side`"
    assert "apache-airflow" not in side
    assert "dvc" not in side


@pytest.mark.process
def test_the_mlserver_venv_imports_the_runtime_without_flask_or_airflow():
    """What MLServer loads (serving/v2.py and everything it imports) runs in .venv-mlserver:
    a module of the runtime's path that starts importing Flask or Airflow fails here first."""
    import subprocess

    python = REPO / ".venv-mlserver" / "bin" / "python"
    assert python.exists(), "run `make setup` (it makes .venv-mlserver)"
    code = ("import sys, serving.v2; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'airflow')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([str(python), "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
