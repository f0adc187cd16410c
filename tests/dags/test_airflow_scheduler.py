"""The real thing: the local Airflow of ``make run`` on loopback, driven through its REST API.

One Airflow for the module (starting it is the slow part): API server,
scheduler, DAG processor and triggerer from :mod:`pipeline.ops.airflow_local`
on free ports, a real Pushgateway, a temporary project with history. The
nightly retraining, two hourly ingestions and a backfill start at the same time;
the one-slot ``dvc`` pool must keep every DVC command apart, and nothing may
be lost. Then Airflow's own metrics, and a clean stop.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path

import pandas as pd
import pytest
import requests

from grafana import generate
from pipeline.ops import airflow_local
from pipeline.ops.ports import Ports
from pipeline.paths import ProjectPaths
from tests.conftest import REPO, free_port
from tests.dags.conftest import make_dvc_project, run, seed_history, wait_until
from tests.grafana_doc import BUILT_IN, Prometheus, check_panel, expand, variable_values, variables

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

RUN_TIMEOUT_S = 420
INGEST_HOURS = ("2025-03-01T03:00:00Z", "2025-03-01T04:00:00Z")  # logical dates
BACKFILL = ("2025-03-01T05:00:00Z", "2025-03-01T06:00:00Z")  # from, to (inclusive)
LOCATIONS = ("berlin", "delhi")
DVC_STAGES = ("preprocess", "train", "evaluate", "promote")


class AirflowApi:
    """REST API v2 with a JWT from ``/auth/token``."""

    def __init__(self, base_url: str, user: str, password: str) -> None:
        self.base = base_url
        reply = requests.post(f"{base_url}/auth/token", timeout=30,
                              json={"username": user, "password": password})
        assert reply.status_code in (200, 201), reply.text
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"

    def call(self, method: str, path: str, **kwargs) -> dict:
        reply = self.session.request(method, f"{self.base}/api/v2{path}", timeout=30, **kwargs)
        assert reply.ok, f"{method} {path}: {reply.status_code} {reply.text[:500]}"
        return reply.json()

    def trigger(self, dag_id: str, logical_date: str | None) -> str:
        body = self.call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": logical_date})
        return body["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")[
            "task_instances"]


def session_pids(leaders: list[int]) -> list[int]:
    """Live processes in the sessions the services lead (setsid: session id = leader pid)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2:].split()
            if int(fields[3]) in leaders and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def listening_addresses(pids: list[int]) -> set[str]:
    """host:port of every TCP socket these processes listen on (from /proc/net/tcp{,6})."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = str(fd.readlink()) if fd.is_symlink() else ""
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                host_hex, port_hex = local.split(":")
                if len(host_hex) == 8:
                    host = socket.inet_ntop(socket.AF_INET, bytes.fromhex(host_hex)[::-1])
                else:
                    host = "ipv6:" + host_hex
                found.add(f"{host}:{int(port_hex, 16)}")
    return found


def failure_report(paths: ProjectPaths, runs: list[tuple[str, str]]) -> str:
    """The errors in the task logs of these runs, for an assertion message."""
    lines = []
    for dag_id, run_id in runs:
        run_dir = paths.airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        for log_file in sorted(run_dir.rglob("*.log")):
            for raw in log_file.read_text(errors="replace").splitlines():
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if event.get("level") in ("error", "critical") or "error_detail" in event:
                    detail = json.dumps(event.get("error_detail", ""))[:1500]
                    lines.append(f"{log_file.relative_to(run_dir)}: {event.get('event')} {detail}")
    return "\n".join(lines) or "no errors in the task logs"


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
        yield {"paths": paths, "ports": ports, "info": info, "startup_s": startup_s,
               "leaders": [airflow_local.ServiceManager(paths.stack_dir).record(n).pid
                           for n in airflow_local.SERVICES]}
    finally:
        airflow_local.stop(paths)


@pytest.fixture(scope="module")
def api(local_airflow) -> AirflowApi:
    info = local_airflow["info"]
    client = AirflowApi(info["airflow UI"], info["airflow user"], info["airflow password"])
    for dag_id in ("aq_ingest", "aq_retrain", "aq_predict"):  # parsed by the DAG processor
        wait_until(lambda d=dag_id: client.session.get(
            f"{client.base}/api/v2/dags/{d}", timeout=10).ok, 120, what=f"{dag_id} parsed")
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


def create_backfill(api: AirflowApi, body: dict) -> dict:
    """POST /backfills; on SQLite Airflow answers 503 while the scheduler holds the write lock."""

    def create():
        reply = api.session.post(f"{api.base}/api/v2/backfills", json=body, timeout=30)
        assert reply.ok or reply.status_code == 503, reply.text
        return reply.json() if reply.ok else None

    return wait_until(create, 60, interval=1, what="the backfill to be created")


def test_retraining_two_ingestions_and_a_backfill_at_once_share_dvc_losing_nothing(
        local_airflow, api, pushgateway):
    """The retraining, two triggered hours and a backfill of two more, all started together."""
    root = local_airflow["paths"].root
    assert all(api.call("GET", f"/dags/{d}")["is_paused"] for d in airflow_local.DAG_IDS)
    # what `make run` does once its first pipeline run is done; aq_predict stays paused here
    airflow_local.set_paused(local_airflow["paths"], False, ["aq_retrain", "aq_ingest"])
    triggered_at = datetime.now(UTC).timestamp()
    runs = [("aq_retrain", api.trigger("aq_retrain", None))]
    runs += [("aq_ingest", api.trigger("aq_ingest", hour)) for hour in INGEST_HOURS]
    # `airflow backfill create` (here via REST): one run per hour of the range
    backfill = create_backfill(api, {"dag_id": "aq_ingest", "max_active_runs": 2,
                                     "from_date": BACKFILL[0], "to_date": BACKFILL[1]})

    def backfill_runs():
        found = api.call("GET", "/dags/aq_ingest/dagRuns",
                         params={"run_type": "backfill"})["dag_runs"]
        return found if len(found) == 2 else None

    runs += [("aq_ingest", r["dag_run_id"])
             for r in wait_until(backfill_runs, 60, what="the backfill's runs")]

    def finished():
        states = {run_id: api.run_state(dag_id, run_id) for dag_id, run_id in runs}
        return states if all(s in ("success", "failed") for s in states.values()) else None

    states = wait_until(finished, RUN_TIMEOUT_S, interval=2, what="the five runs to finish")
    assert set(states.values()) == {"success"}, failure_report(local_airflow["paths"], runs)
    wait_until(lambda: api.call("GET", f"/backfills/{backfill['id']}")["completed_at"], 60,
               what="the backfill to be marked complete")

    # the pool kept DVC commands apart: no two dvc-pool task instances overlapped
    dvc_tis = [ti for dag_id, run_id in runs for ti in api.task_instances(dag_id, run_id)
               if ti["pool"] == "dvc"]
    assert len(dvc_tis) == len(DVC_STAGES) + len(INGEST_HOURS) + 2
    spans = [(pd.Timestamp(ti["start_date"]), pd.Timestamp(ti["end_date"]), ti["task_id"])
             for ti in dvc_tis]
    for a, b in combinations(spans, 2):
        assert a[1] <= b[0] or b[1] <= a[0], f"{a[2]} and {b[2]} ran DVC at the same time"

    # no data lost, no hole: every hour of both locations from the end of the history to the
    # last interval is stored, versioned and pushed. A triggered run ingests up to the hour
    # before its logical date, a backfill interval [05:00, 06:00) up to its end; each run
    # catches up from the newest stored hour, so the hours between them are filled too.
    expected = set(pd.date_range("2025-03-01T00:00", "2025-03-01T06:00", freq="h", tz="UTC"))
    for loc in LOCATIONS:
        part = root / "data/raw/source=synthetic" / f"location={loc}" / "month=2025-03.parquet"
        assert set(pd.read_parquet(part, columns=["time"])["time"]) == expected, loc
    assert "up to date" in run(["dvc", "status", "data.dvc"], cwd=root).stdout
    assert "in sync" in run(["dvc", "status", "-c", "-r", "local", "data.dvc"], cwd=root).stdout

    # the retraining's steps pushed their metrics during this run
    for step in DVC_STAGES:
        assert pushgateway.value("aq_step_success", step=step) == 1, step
        pushed = pushgateway.value("push_time_seconds", step=step)
        assert pushed is not None
        assert pushed >= triggered_at, step
    assert (root / "models" / "champion.json").is_file()


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
    from pipeline.ops import stack
    from pipeline.ops.services import ServiceManager

    paths = local_airflow["paths"]
    ports = Ports(prometheus=free_port(), alertmanager=free_port(), webhook=free_port(),
                  node_exporter=free_port(), serving=free_port(),
                  airflow=local_airflow["ports"].airflow,
                  pushgateway=local_airflow["ports"].pushgateway)
    layout = stack.write_configs(paths, ports, fast=True)
    manager = ServiceManager(tmp_path_factory.mktemp("prometheus-state"))
    started = time.time()
    manager.start("prometheus", stack.commands(layout, ports, fast=True)["prometheus"])
    try:
        prom = Prometheus(ports.url("prometheus"), started)
        manager.wait_for_http(f"{prom.url}/-/ready", timeout=60, name="prometheus")

        def both_scraped():
            airflow = prom.instant('airflow_dag_status{job="airflow",dag_id="aq_retrain",'
                                   'status="success"}')
            pipeline = prom.instant('aq_step_success{job="aq_pipeline",step="train"}')
            return (airflow, pipeline) if airflow and pipeline else None

        wait_until(both_scraped, 60, what="Airflow and pipeline metrics")
        yield prom
    finally:
        manager.stop("prometheus")


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
    assert ui == generate.PORTS.url("airflow")  # the same default port the local stack uses
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
    task_groups = {g for p in pids if (g := _pgid(p)) is not None} - set(local_airflow["leaders"])
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
