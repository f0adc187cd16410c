"""Real MLflow tracking server and MLServer processes, and a small project that logs to them.

``mlflow`` starts ``mlflow server`` from ``.venv-mlflow`` through the ops code ``make run``
uses (stack/mlflow_local.py) on a free port, with its state in a temporary directory.
``tracked`` runs the pipeline's steps with the CLI, as DVC does, logging to that server.
``mlflow_client`` runs MLflow's own Python client (in its venv) against the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack import mlflow_local
from tests.conftest import REPO, free_port, make_project

# a small model that may lose to persistence: promoted anyway (tracked, not judged)
OVERRIDES = {"model": {"max_iter": 40}, "promotion": {"min_skill": -1.0, "tolerance": 1.0}}
PIPELINE = ("ingest", "preprocess", "train", "evaluate", "backtest", "promote")
BACKTEST = ("--start", "2025-02-20")  # after the small project's training labels + 24 h


def step_env(project: Path, uri: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AQ_", "MLFLOW_"))}
    env.update({"AQ_PROJECT_DIR": str(project), "DVC_NO_ANALYTICS": "1",
                "PYTHONPATH": str(REPO), "AQ_MLFLOW_TRACKING_URI": uri or "off", **extra})
    return env


def run_step(project: Path, name: str, *args: str, uri: str | None = None,
             **extra: str) -> subprocess.CompletedProcess:
    args = BACKTEST if name == "backtest" and not args else args
    proc = subprocess.run([sys.executable, "-m", "pipeline", name, *args], cwd=project,
                          env=step_env(project, uri, **extra), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"step {name} failed:\n{proc.stderr[-3000:]}"
    return proc


@dataclass
class Mlflow:
    url: str
    state: ProjectPaths

    def api(self, method: str, path: str, **kwargs) -> dict:
        resp = requests.request(method, f"{self.url}/api/2.0/mlflow/{path}", timeout=10,
                                **kwargs)
        resp.raise_for_status()
        return resp.json()

    def runs(self, experiment: str = "aq-forecast") -> list[dict]:
        found = self.api("GET", "experiments/get-by-name", params={"experiment_name": experiment})
        exp = found["experiment"]["experiment_id"]
        return self.api("POST", "runs/search", json={"experiment_ids": [exp],
                                                     "max_results": 1000}).get("runs", [])

    def alias(self, alias: str, model: str = "aq-forecast") -> dict:
        return self.api("GET", "registered-models/alias",
                        params={"name": model, "alias": alias})["model_version"]


def start_mlflow(root: Path) -> Mlflow:
    paths = ProjectPaths(root)
    ports = Ports(mlflow=free_port())
    mlflow_local.start(paths, ports, timeout=240)
    return Mlflow(ports.url("mlflow"), paths)


@pytest.fixture(scope="session")
def mlflow(tmp_path_factory) -> Iterator[Mlflow]:
    server = start_mlflow(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        mlflow_local.stop(server.state)


def mlflow_client(uri: str, code: str) -> object:
    """Run ``code`` with MLflow's own client (``client = MlflowClient(uri)``) in .venv-mlflow;
    the JSON it prints last is returned."""
    script = f"import json\nfrom mlflow import MlflowClient\nclient = MlflowClient({uri!r})\n"
    proc = subprocess.run([str(mlflow_local.VENV / "bin" / "python"), "-c",
                           script + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env={"PATH": os.environ.get("PATH", ""),
                                            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                                            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass
class Tracked:
    root: Path
    logs: dict[str, str]  # step -> its stderr
    first: str = ""  # the champion the make-run-style pipeline made (later tests move it)

    @property
    def paths(self) -> ProjectPaths:
        return ProjectPaths(self.root)

    def champion(self) -> str:
        return json.loads((self.root / "models" / "champion.json").read_text())["version"]

    def commit(self) -> str:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=self.root, capture_output=True,
                              text=True, check=True).stdout.strip()


@pytest.fixture(scope="session")
def tracked(tmp_path_factory, mlflow) -> Tracked:
    """The make-run pipeline of a small project, every step logging to the server."""
    root = make_project(tmp_path_factory.mktemp("tracked") / "project", overrides=OVERRIDES)
    logs = {"ingest": run_step(root, "ingest", uri=mlflow.url).stderr}
    # as make run: the data recorded with DVC (data.dvc), the project a commit of its own
    env, dvc = step_env(root, None), str(Path(sys.executable).parent / "dvc")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True, timeout=60)
    for args in (["init", "-q"], ["add", "data", "--quiet"]):
        subprocess.run([dvc, *args], cwd=root, env=env, check=True, timeout=300)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True, timeout=60)
    subprocess.run([*git, "commit", "-qm", "tracked project"], cwd=root, check=True,
                   timeout=60)
    logs.update({name: run_step(root, name, uri=mlflow.url).stderr for name in PIPELINE[1:]})
    tracked = Tracked(root, logs)
    tracked.first = tracked.champion()
    return tracked


# ---------------------------------------------------------------- MLServer beside the Flask app

from tests.serving.conftest import (  # noqa: E402  (the served project: real steps, 2 versions)
    ServedProject,
    copy_project,
    served_project,  # noqa: F401  (a fixture, used by name)
    start_server,
)


@dataclass
class V2Server:
    url: str
    project: ServedProject
    ports: Ports

    def infer(self, location: str, observations: list | None = None) -> requests.Response:
        inputs = [{"name": "location_id", "shape": [1], "datatype": "BYTES", "data": [location]}]
        if observations is not None:
            inputs.append({"name": "observations", "shape": [1], "datatype": "BYTES",
                           "data": [json.dumps(observations)]})
        return requests.post(f"{self.url}/v2/models/aq-forecast/infer",
                             json={"inputs": inputs}, timeout=30)

    def ready(self) -> int:
        return requests.get(f"{self.url}/v2/models/aq-forecast/ready", timeout=10).status_code


def start_mlserver(project: ServedProject, timeout: float = 240, ready: bool = True) -> V2Server:
    """MLServer through stack/mlserver_local.py on free ports; live when it returns
    (and serving a verified champion, unless ``ready=False``)."""
    from stack import mlserver_local

    ports = Ports(mlserver=free_port(), mlserver_grpc=free_port(), mlserver_metrics=free_port())
    saved = dict(os.environ)
    os.environ["AQ_SERVING_RELOAD_INTERVAL_S"] = "0.5"
    try:
        mlserver_local.start(project.paths, ports, timeout=timeout)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if ready:
        try:
            mlserver_local.wait_ready(ports.url("mlserver"), timeout=timeout,
                                      paths=project.paths)
        except BaseException:
            mlserver_local.stop(project.paths)  # nothing left running behind a failed start
            raise
    return V2Server(ports.url("mlserver"), project, ports)


@pytest.fixture(scope="session")
def both(served_project, tmp_path_factory):  # noqa: F811
    """The Flask app (gunicorn) and MLServer serving one copy of the served project."""
    from stack import mlserver_local, serving_local

    project = copy_project(served_project, tmp_path_factory.mktemp("v2") / "project")
    flask = start_server(project)
    try:
        v2 = start_mlserver(project)
        try:
            yield flask, v2
        finally:
            mlserver_local.stop(project.paths)
    finally:
        serving_local.stop(project.paths)
