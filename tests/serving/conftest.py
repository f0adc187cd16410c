"""A served project (real steps, a real champion in a real registry) and gunicorn serving it.

One small synthetic project (2 locations, 2 months) runs ingest .. predict with the CLI, as
DVC does; a second candidate (fewer trees) is registered but not promoted, for reload tests.
``server`` runs the app with gunicorn (2 workers) through the ops code ``make run`` uses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack import serving_local
from stack.supervisor import Supervisor
from tests.conftest import REPO, free_port, make_project

STEPS = ("ingest", "preprocess", "train", "evaluate", "promote", "predict")
# a small model that may lose to persistence: promote anyway, it is served, not judged
OVERRIDES = {"model": {"max_iter": 60}, "promotion": {"min_skill": -1.0}}


def run_step(project: Path, name: str, *args: str) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AQ_")},
           "AQ_PROJECT_DIR": str(project), "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pipeline", name, *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"step {name} failed:\n{proc.stderr[-3000:]}"


@dataclass(frozen=True)
class ServedProject:
    root: Path
    champion: str
    other: str  # a registered, verified version that is not the champion

    @property
    def paths(self) -> ProjectPaths:
        return ProjectPaths(self.root)


@pytest.fixture(scope="session")
def served_project(tmp_path_factory) -> ServedProject:
    root = make_project(tmp_path_factory.mktemp("serving") / "project", overrides=OVERRIDES)
    for step in STEPS:
        run_step(root, step)
    champion = json.loads((root / "models" / "champion.json").read_text())["version"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["model"]["max_iter"] = 30
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_step(root, "train")
    from pipeline.io.registry import Registry

    other = Registry(ProjectPaths(root)).register(root / "build" / "candidate")
    params["model"]["max_iter"] = OVERRIDES["model"]["max_iter"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert other != champion
    return ServedProject(root, champion, other)


def copy_project(project: ServedProject, target: Path) -> ServedProject:
    shutil.copytree(project.root, target, symlinks=True,
                    ignore=shutil.ignore_patterns(".stack", "__pycache__"))
    return ServedProject(target, project.champion, project.other)


@dataclass
class Server:
    url: str
    project: ServedProject
    ports: Ports
    supervisor: Supervisor

    def log(self) -> str:
        return self.supervisor.log_file(serving_local.NAME).read_text(errors="replace")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:  # noqa: S310
            return resp.read().decode()


def serving_ports() -> Ports:
    """Free ports for nginx and its mtail (the rest are not started here)."""
    serving = free_port()
    metrics = free_port()
    while metrics == serving:
        metrics = free_port()
    return Ports(serving=serving, serving_proxy_metrics=metrics)


def start_server(project: ServedProject, env: dict[str, str] | None = None) -> Server:
    """nginx + gunicorn (+ mtail) through stack/serving_local.py, as `make run` starts them,
    on free ports; ready when it returns."""
    ports = serving_ports()
    paths = project.paths
    saved = dict(os.environ)
    os.environ.update({"AQ_SERVING_RELOAD_INTERVAL_S": "0.5", **(env or {})})
    try:
        serving_local.start(paths, ports, timeout=120)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    server = Server(ports.url("serving"), project, ports, Supervisor(paths.stack_dir))
    serving_local.wait_ready(server.url, timeout=120)
    return server


@pytest.fixture(scope="session")
def server(served_project) -> Iterator[Server]:
    running = start_server(served_project)
    try:
        yield running
    finally:
        serving_local.stop(served_project.paths)
