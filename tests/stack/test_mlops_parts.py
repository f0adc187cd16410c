"""The MLflow server and MLServer as parts of `make run`'s stack (no process started here:
tests/mlops starts the real ones through the same modules)."""

from __future__ import annotations

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack import airflow_local, mlflow_local, mlserver_local, monitoring, serving_local
from stack.__main__ import describe, parts


def test_mlflow_starts_before_airflow_and_mlserver_after_the_forecast_api(tmp_path):
    paths = ProjectPaths(tmp_path)
    chosen = parts(paths)
    order = [p.__module__ for p in chosen]
    assert order.index(mlflow_local.__name__) < order.index(airflow_local.__name__)
    assert order.index(serving_local.__name__) < order.index(mlserver_local.__name__)
    assert order[0] == monitoring.__name__
    bare = parts(paths, with_airflow=False, with_mlflow=False, with_mlserver=False)
    assert [p.__module__ for p in bare] == [monitoring.__name__, serving_local.__name__]
    # supervisord stops in reverse priority: MLServer with the readers, MLflow after Airflow
    ports = Ports()
    assert mlserver_local.program(paths, ports).priority > serving_local.PRIORITY
    assert mlflow_local.program(paths, ports).priority < 300  # Airflow's parts: 300+


def test_the_airflow_tasks_log_to_the_configured_or_the_local_server_or_nowhere(
        tmp_path, monkeypatch):
    paths, ports = ProjectPaths(tmp_path), Ports(mlflow=15000)
    monkeypatch.delenv("AQ_MLFLOW_TRACKING_URI", raising=False)
    assert airflow_local.tracking_uri(paths, ports) == "off"  # no local server running
    monkeypatch.setenv("AQ_MLFLOW_TRACKING_URI", "https://mlflow.example.org/")
    assert airflow_local.tracking_uri(paths, ports) == "https://mlflow.example.org"
    env = airflow_local.part_env(paths, ports)
    assert env["AQ_MLFLOW_TRACKING_URI"] == "https://mlflow.example.org"


def test_make_run_prints_the_mlflow_pages_and_the_v2_endpoint(tmp_path):
    ports = Ports()
    info = {**mlflow_local.urls(ports), **mlserver_local.urls(ports)}
    text = "\n".join(describe(info, ProjectPaths(tmp_path)))
    assert "http://127.0.0.1:5000/#/models/aq-forecast" in text
    assert "http://127.0.0.1:8090/v2/models/aq-forecast/infer" in text
    assert info["AQ_MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    # the V2 curl make run prints is a valid V2 request for the first location
    assert '"datatype": "BYTES", "data": ["berlin"]' in mlserver_local.curl_example(
        ports.url("mlserver"), "berlin")
    # MLServer listens where the stack's ports say, on loopback
    env = mlserver_local.service_env(ProjectPaths(tmp_path), ports)
    assert (env["MLSERVER_HOST"], env["MLSERVER_HTTP_PORT"]) == ("127.0.0.1", "8090")
