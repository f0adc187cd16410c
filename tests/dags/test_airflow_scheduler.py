"""The real thing: the local Airflow of ``make run`` on loopback, driven through its REST API.

One Airflow for the module (starting it is the slow part): API server,
scheduler, DAG processor and triggerer from :mod:`stack.airflow_local`
on free ports, a real Pushgateway, a temporary project with history. The
nightly retraining, two hourly ingestions and a backfill start at the same time;
the one-slot ``dvc`` pool must keep every DVC command apart, and nothing may
be lost. Then Airflow's own metrics, and a clean stop.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from grafana import generate, parts
from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack import airflow_local
from stack.supervisor import Program, Supervisor
from tests.conftest import REPO, free_port
from tests.dags.airflow_harness import (
    AirflowApi,
    listening_addresses,
    retraining_two_ingestions_and_a_backfill_at_once,
    session_pids,
)
from tests.dags.conftest import make_dvc_project, seed_history, wait_until
from tests.grafana_doc import BUILT_IN, Prometheus, check_panel, expand, variable_values, variables

pytestmark = [pytest.mark.airflow, pytest.mark.slow]


@pytest.fixture(scope="module")
def local_airflow(tmp_path_factory, pushgateway, monkeypatch_module):
    root = make_dvc_project(tmp_path_factory.mktemp("scheduler") / "project")
    seed_history(root)
    monkeypatch_module.setenv("AQ_TASK_RETRIES", "0")
    # only the runs the tests trigger: no scheduled run for the current hour or night
    monkeypatch_module.setenv("AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE", "False")
    paths = ProjectPaths(root)
    ports = Ports(airflow=free_port(), pushgateway=pushgateway.port)
    started = time.monotonic()
    info = airflow_local.start(paths, ports)
    startup_s = time.monotonic() - started
    try:
        supervisor = Supervisor(paths.stack_dir)
        # supervisord leads the session every part (and every task it runs) lives in
        yield {"paths": paths, "ports": ports, "info": info, "startup_s": startup_s,
               "leaders": [supervisor.daemon_pid()],
               "programs": [supervisor.pid(n) for n in airflow_local.SERVICES]}
    finally:
        airflow_local.stop(paths)


@pytest.fixture(scope="module")
def api(local_airflow) -> AirflowApi:
    info = local_airflow["info"]
    client = AirflowApi(info["airflow UI"], info["airflow user"], info["airflow password"])
    client.wait_parsed()
    return client


def test_start_prints_the_ui_and_login_and_binds_loopback_only(local_airflow, api):
    info, ports = local_airflow["info"], local_airflow["ports"]
    assert info["airflow UI"] == f"http://127.0.0.1:{ports.airflow}"
    assert info["airflow user"] == "admin"
    assert len(info["airflow password"]) >= 8
    assert requests.get(info["airflow UI"], timeout=10).ok  # the UI
    assert api.call("GET", "/importErrors")["total_entries"] == 0
    pids = session_pids(local_airflow["leaders"])
    assert listening_addresses(pids) == {f"127.0.0.1:{ports.airflow}"}
    cfg = (local_airflow["paths"].airflow_home / "airflow.cfg")
    assert cfg.stat().st_mode & 0o077 == 0  # it holds the JWT secret
    # the password lives in one private file; no log of any part shows it
    paths = local_airflow["paths"]
    assert airflow_local.password_file(paths).stat().st_mode & 0o777 == 0o600
    logs = sorted((paths.stack_dir / "logs").glob("airflow-*.log"))
    assert logs
    for log_file in logs:
        assert log_file.stat().st_mode & 0o777 == 0o600
        assert info["airflow password"] not in log_file.read_text(errors="replace"), log_file
    for proc_dir in (Path("/proc") / str(pid) for pid in session_pids(local_airflow["leaders"])):
        with contextlib.suppress(OSError):
            assert info["airflow password"].encode() not in (proc_dir / "cmdline").read_bytes()


def test_retraining_two_ingestions_and_a_backfill_at_once_share_dvc_losing_nothing(
        local_airflow, api, pushgateway):
    """The retraining, two triggered hours and a backfill of two more, all started together.

    SQLite may answer the backfill request 503 "database is locked" while the
    scheduler writes: the scenario retries it (the PostgreSQL profile may not).
    """
    retraining_two_ingestions_and_a_backfill_at_once(local_airflow["paths"], api, pushgateway,
                                                     retry_503=True)


def test_airflow_metrics_are_exported_for_prometheus(local_airflow, api):
    """airflow-exporter on the API server: DAG and task states Prometheus scrapes."""
    from prometheus_client.parser import text_string_to_metric_families

    url = local_airflow["info"]["airflow metrics"]
    reply = requests.get(url, timeout=30)  # no token: Prometheus scrapes it as is
    assert reply.ok
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.text) for s in family.samples
    }

    def value(name, **labels):
        return next((v for (n, lbl), v in samples.items()
                     if n == name and labels.items() <= dict(lbl).items()), None)

    assert value("airflow_dag_status", dag_id="aq_retrain", status="success") == 1
    assert value("airflow_dag_status", dag_id="aq_ingest", status="success") == 4
    assert value("airflow_dag_last_status", dag_id="aq_retrain", status="success") == 1
    # each run versions the data; a run whose hours an earlier run already caught up stores
    # nothing new and skips its Asset event (no aq_predict for nothing)
    versioned = value("airflow_task_status", dag_id="aq_ingest", task_id="data_version",
                      status="success")
    skipped = value("airflow_task_status", dag_id="aq_ingest", task_id="data_version",
                    status="skipped") or 0
    assert versioned >= 1
    assert versioned + skipped == 4
    assert value("airflow_task_status", dag_id="aq_retrain", task_id="train",
                 status="failed") is None


def documented_airflow_metrics() -> dict[str, set[str]]:
    """Name -> labels of the "Airflow metrics" table in docs/metrics.md."""
    out, section = {}, ""
    for line in (REPO / "docs" / "metrics.md").read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif section == "Airflow metrics" and line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            out[cells[0].strip("`")] = set(re.findall(r"`([^`]+)`", cells[1]))
    return out


@pytest.fixture(scope="module")
def airflow_prometheus(local_airflow, tmp_path_factory) -> Iterator[Prometheus]:
    """A real Prometheus on the committed prometheus.yml, scraping Airflow and the Pushgateway
    once the DAG runs above are done."""
    from stack import monitoring

    paths = local_airflow["paths"]
    ports = Ports(prometheus=free_port(), alertmanager=free_port(), webhook=free_port(),
                  node_exporter=free_port(), serving=free_port(),
                  airflow=local_airflow["ports"].airflow,
                  pushgateway=local_airflow["ports"].pushgateway)
    layout = monitoring.write_configs(paths, ports, fast=True)
    supervisor = Supervisor(tmp_path_factory.mktemp("prometheus-state"))
    started = time.time()
    supervisor.start(Program("prometheus",
                             monitoring.commands(layout, ports, fast=True)["prometheus"]))
    try:
        prom = Prometheus(ports.url("prometheus"), started)
        supervisor.wait_for_http(f"{prom.url}/-/ready", timeout=60, name="prometheus")

        def both_scraped():
            airflow = prom.instant('airflow_dag_status{job="airflow",dag_id="aq_retrain",'
                                   'status="success"}')
            pipeline = prom.instant('aq_step_success{job="aq_pipeline",step="train"}')
            return (airflow, pipeline) if airflow and pipeline else None

        wait_until(both_scraped, 60, what="Airflow and pipeline metrics")
        yield prom
    finally:
        supervisor.stop_all()


def test_airflow_metrics_sit_beside_the_pipelines_in_prometheus(airflow_prometheus):
    """A real Prometheus on the committed prometheus.yml scrapes Airflow and the Pushgateway."""
    query = airflow_prometheus.instant
    airflow = query('airflow_dag_status{job="airflow",dag_id="aq_retrain",status="success"}')
    pipeline = query('aq_step_success{job="aq_pipeline",step="train"}')
    assert airflow[0]["value"][1] == "1"
    assert pipeline[0]["value"][1] == "1"
    documented = documented_airflow_metrics()
    assert set(documented) == {"airflow_dag_status", "airflow_dag_last_status",
                               "airflow_dag_run_duration", "airflow_task_status"}
    for name, labels in documented.items():
        series = query(f'{name}{{job="airflow"}}')
        if name == "airflow_dag_run_duration":  # only while a run is running: none now
            assert series == []
            continue
        assert series, name
        assert all(labels <= set(s["metric"]) for s in series), name
    failed = query('airflow_task_status{job="airflow",status="failed"}')
    assert [s for s in failed if float(s["value"][1]) > 0] == []


def test_airflow_dashboard_queries_return_data_for_every_dag(airflow_prometheus):
    """Every panel of grafana/dashboards/airflow.json against this Airflow's real runs."""
    dashboards, metas = generate.build()
    dashboard = dashboards["airflow.json"]
    present = airflow_prometheus.names()
    problems = [problem for meta in metas if meta.dashboard == dashboard["uid"]
                for problem in check_panel(meta, dashboard, airflow_prometheus, present)]
    assert problems == []
    assert variable_values(airflow_prometheus.url, variables(dashboard)["dag_id"]) == [
        "aq_ingest", "aq_retrain"]  # aq_predict stayed paused: no runs, no series
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:  # valid PromQL here; tests/integration sees it mark a failure
            airflow_prometheus.range(expand(annotation["expr"], BUILT_IN))


def test_airflow_dashboard_links_open_real_dags_and_tasks(airflow_prometheus, api):
    """The DAG and task links of the tables lead to DAGs and tasks this Airflow has."""
    dags = {s["metric"]["dag_id"] for s in airflow_prometheus.instant(
        "max by (dag_id) (airflow_dag_last_status == 1)")}
    tasks = {(s["metric"]["dag_id"], s["metric"]["task_id"]) for s in airflow_prometheus.instant(
        "sum by (dag_id, task_id) (airflow_task_status)")}
    assert dags == {"aq_ingest", "aq_retrain"}
    assert len(tasks) >= 5
    for dag_id in dags:
        assert api.call("GET", f"/dags/{dag_id}")["dag_id"] == dag_id
    for dag_id, task_id in tasks:
        assert api.call("GET", f"/dags/{dag_id}/tasks/{task_id}")["task_id"] == task_id
    dashboard = generate.build()[0]["airflow.json"]
    ui = variables(dashboard)["airflow_url"]["query"]
    assert ui == parts.PORTS.url("airflow")  # the same default port the local stack uses
    for page in ("", f"/dags/{sorted(dags)[0]}", "/dag_runs"):  # the UI serves its routes
        assert requests.get(f"{api.base}{page}", timeout=10).ok, page


def test_stop_leaves_nothing_behind_even_mid_run(local_airflow, api):
    """Stopping while a task runs DVC also ends the task's own process group and DVC."""
    paths, ports = local_airflow["paths"], local_airflow["ports"]
    run_id = api.trigger("aq_retrain", None)

    def running_task():
        return [ti for ti in api.task_instances("aq_retrain", run_id) if ti["state"] == "running"]

    wait_until(running_task, 120, interval=0.5, what="a running retraining task")
    pids = session_pids(local_airflow["leaders"])
    task_groups = ({g for p in pids if (g := _pgid(p)) is not None}
                   - set(local_airflow["leaders"]) - set(local_airflow["programs"]))
    assert task_groups, "the running task has its own process group"

    stopped = airflow_local.stop(paths)

    assert sorted(stopped) == sorted(airflow_local.SERVICES)
    assert session_pids(local_airflow["leaders"]) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ports.airflow), 2).close()
    assert airflow_local.stop(paths) == []  # idempotent


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
