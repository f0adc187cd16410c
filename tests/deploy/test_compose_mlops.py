"""docker-compose.yml's MLflow and MLServer services mirror what `make run` starts."""

from __future__ import annotations

import re

import yaml

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack import mlflow_local, mlserver_local
from tests.conftest import REPO

SERVICES = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
PORTS = Ports()


def locked(lock: str, package: str) -> str:
    return re.search(rf"^{package}==(\S+)", (REPO / lock).read_text(), re.MULTILINE).group(1)


def test_mlflow_service_is_the_locked_version_on_the_local_address():
    service = SERVICES["mlflow"]
    assert service["image"].endswith(":v" + locked("requirements-mlflow.lock", "mlflow"))
    local = mlflow_local.command(ProjectPaths(REPO), PORTS)
    command = service["command"]
    for flag in ("--host", "--port", "--workers"):
        assert command[command.index(flag) + 1] == local[local.index(flag) + 1], flag
    assert service["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert SERVICES["serving"]["environment"]["AQ_PROJECT_DIR"] == "/opt/aq"
    # every project container logs its steps' runs there
    project_env = SERVICES["airflow-scheduler"]["environment"]
    assert project_env["AQ_MLFLOW_TRACKING_URI"] == PORTS.url("mlflow")


def test_mlserver_service_runs_the_runtime_on_the_local_ports():
    service = SERVICES["mlserver"]
    assert service["build"]["dockerfile"] == "deploy/mlserver/Dockerfile"
    assert service["command"][-1] == "deploy/mlserver"
    local = mlserver_local.service_env(ProjectPaths(REPO), PORTS)
    for key in ("MLSERVER_HOST", "MLSERVER_HTTP_PORT", "MLSERVER_GRPC_PORT",
                "MLSERVER_METRICS_PORT"):
        assert service["environment"][key] == local[key], key
    dockerfile = (REPO / "deploy/mlserver/Dockerfile").read_text()
    assert "--require-hashes -r requirements-mlserver.lock" in dockerfile
    assert "apache-airflow" not in (REPO / "requirements-mlserver.lock").read_text()
