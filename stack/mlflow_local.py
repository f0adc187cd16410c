"""The MLflow tracking server of ``make run``: ``mlflow server`` on 127.0.0.1 from
``.venv-mlflow``, a supervisord program.

The server keeps its runs and model registry in SQLite and the runs' artifacts in a folder,
both under ``.stack/mlflow/`` (``make clean`` removes them with the rest of the local state),
and serves the artifacts itself (``--serve-artifacts``, MLflow's default: the steps upload
through the server, pipeline/io/tracking.py). One uvicorn worker: the steps log a few runs a
day. MLflow 3's job runner (seven huey consumers, ~350 MB, for GenAI evaluation jobs) is
switched off: nothing here uses it. ``start`` exports ``AQ_MLFLOW_TRACKING_URI`` (``.stack/env``)
for the steps ``make run`` runs next and the Airflow tasks; its UI is the same address.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack.supervisor import REPO, Program, ServiceError, Supervisor

log = logging.getLogger(__name__)
NAME = "mlflow"
# started before Airflow (its tasks log to it), stopped after it and after serving
PRIORITY = 150
VENV = REPO / ".venv-mlflow"  # scripts/setup.sh makes it from requirements-mlflow.lock


def state_dir(paths: ProjectPaths) -> Path:
    return paths.stack_dir / "mlflow"


def mlflow_bin() -> str:
    candidate = VENV / "bin" / "mlflow"
    if not candidate.exists():
        raise ServiceError(f"{candidate} not found: run `make setup` (it makes .venv-mlflow "
                           "from requirements-mlflow.lock)")
    return str(candidate)


def command(paths: ProjectPaths, ports: Ports) -> list[str]:
    state = state_dir(paths)
    return [mlflow_bin(), "server", "--host", ports.host, "--port", str(ports.mlflow),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}",
            "--artifacts-destination", str(state / "artifacts")]


def program(paths: ProjectPaths, ports: Ports) -> Program:
    return Program(NAME, command(paths, ports),
                   env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                   directory=state_dir(paths), priority=PRIORITY, stopwaitsecs=20)


def urls(ports: Ports) -> dict[str, str]:
    base = ports.url("mlflow")
    return {"AQ_MLFLOW_TRACKING_URI": base, "mlflow UI": base}


def start(paths: ProjectPaths, ports: Ports, timeout: float = 120.0) -> dict[str, str]:
    """Start the server unless it runs; wait until ``/health`` answers (the first start
    creates the database: ~10-30 s), then warm it up."""
    from stack.monitoring import port_in_use

    supervisor = Supervisor(paths.stack_dir)
    if not supervisor.is_running(NAME) and port_in_use(ports.host, ports.mlflow):
        raise ServiceError(f"mlflow: port {ports.address('mlflow')} is taken by another "
                           f"process; choose another with {Ports.env_var('mlflow')}=...")
    state_dir(paths).mkdir(parents=True, exist_ok=True)
    started = supervisor.start(program(paths, ports))
    try:
        supervisor.wait_for_http(f"{ports.url('mlflow')}/health", timeout=timeout, name=NAME)
    except Exception:
        if started:
            supervisor.stop(NAME)
        raise
    warm_up(ports.url("mlflow"))
    return urls(ports)


def warm_up(base_url: str, timeout: float = 30.0) -> None:
    """One run search (of the Default experiment, read-only): the server's first query pays
    ~1 s of lazy loading, which would otherwise fall on the first step that logs a run."""
    request = urllib.request.Request(
        f"{base_url}/api/2.0/mlflow/runs/search", method="POST",
        data=json.dumps({"experiment_ids": ["0"], "max_results": 1}).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (local)
            resp.read()
    except OSError as exc:  # not fatal: the steps only pay the first query's cost
        log.warning("mlflow: warm-up query failed: %s", exc)


def stop(paths: ProjectPaths) -> bool:
    return Supervisor(paths.stack_dir).stop(NAME)
