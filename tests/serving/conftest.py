"""A served project (real steps, a real champion in a real registry) and gunicorn serving it.

``served_project`` is a copy of tests/fixtures/frozen/: a small synthetic project (2 locations,
2 months) that ``python -m tests.fixtures.make_frozen`` made with the CLI steps ingest ..
predict, as DVC does, plus a second registered candidate (fewer trees), not promoted, for
reload tests. Nothing here trains. ``server`` runs the app as ``make run`` does: nginx in front
of gunicorn (2 workers), through stack/serving_local.py.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack import serving_local
from stack.supervisor import Supervisor
from tests.conftest import free_port
from tests.fixtures.make_frozen import FROZEN, MANIFEST


@dataclass(frozen=True)
class ServedProject:
    root: Path
    champion: str
    other: str  # a registered, verified version that is not the champion

    @property
    def paths(self) -> ProjectPaths:
        return ProjectPaths(self.root)


def frozen_project(target: Path) -> ServedProject:
    """A writable copy of the frozen served project at ``target``."""
    shutil.copytree(FROZEN, target)
    manifest = json.loads((target / MANIFEST).read_text())
    return ServedProject(target, manifest["champion"], manifest["other"])


@pytest.fixture(scope="session")
def served_project(tmp_path_factory) -> ServedProject:
    return frozen_project(tmp_path_factory.mktemp("serving") / "project")


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
