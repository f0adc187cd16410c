"""Shared fixtures: a temporary project (params.yaml + code) so tests never touch the checkout."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import yaml

from pipeline.__main__ import quiet_openmp_waits
from pipeline.context import Context
from pipeline.settings import Settings
from tests import scheduling, tiers

REPO = Path(__file__).resolve().parents[1]

SMALL_PARAMS = {
    "locations": [
        {"id": "berlin", "name": "Berlin", "latitude": 52.52, "longitude": 13.405,
         "timezone": "Europe/Berlin"},
        {"id": "delhi", "name": "Delhi", "latitude": 28.6139, "longitude": 77.209,
         "timezone": "Asia/Kolkata"},
    ],
    "source": {"kind": "synthetic", "start": "2025-01-01", "end": "2025-03-01"},
    "evaluation": {"holdout_days": 14},
    # no per-horizon search in test projects (tests of the search set it themselves): tests
    # train small models quickly; the search is exercised on its own and in dvc repro
    "model": {"max_iter": 80, "selection": {"max_fits": 1}},
}


def pytest_configure(config):
    # as `python -m pipeline` does: idle OpenMP threads sleep, set before scikit-learn loads
    # (tiers.install imports it); spinning ones made in-process fits 10-50x slower on a busy
    # 2-core machine (tests/core/test_selection.py: 201 s -> 4 s at load 19)
    quiet_openmp_waits()
    tiers.install()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    """Setup and call of a test run under tests/tiers.py's check: an unmarked test that starts
    a process or fits a model fails, naming the marker it needs."""
    return (yield from tiers.watching(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from tiers.watching(item))


def pytest_xdist_make_scheduler(config, log):
    """Units (a file, or a directory sharing a dear session fixture) longest first:
    tests/scheduling.py."""
    return scheduling.make_scheduler(config, log)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_params(root: Path, overrides: dict | None = None) -> Path:
    """Write params.yaml: the repo's defaults, the small test window, then overrides."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for layer in (SMALL_PARAMS, overrides or {}):
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(params.get(key), dict):
                params[key] = {**params[key], **value}
            else:
                params[key] = value
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def make_project(root: Path, overrides: dict | None = None, with_dvc: bool = False) -> Path:
    """A runnable copy of the project in ``root`` (code, dvc.yaml, params.yaml)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "pipeline", root / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, root / name)
    write_params(root, overrides)
    if with_dvc:
        import subprocess

        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        subprocess.run(["dvc", "init", "-q"], cwd=root, check=True)
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


@pytest.fixture
def ctx(project: Path) -> Context:
    """A Context on the temporary project, with no Pushgateway."""
    return Context.load(project, settings=Settings())
