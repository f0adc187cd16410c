"""The scale-out profile for real: PostgreSQL + CeleryExecutor + Redis, two workers, on loopback.

One deployment for the module (starting it is the slow part), from
:mod:`stack.airflow_celery` on free ports: a PostgreSQL cluster made by
``initdb`` (as the ``postgres`` user when the tests run as root), Redis, the four
Airflow parts and two Celery workers, with a real Pushgateway and a temporary
project with history. The scheduler scenario of the SQLite profile runs here
unchanged, and must spread over both workers without a 503; then a provider's
quota must hold for the two workers together; then a clean stop.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psycopg2
import pytest
import redis
import yaml

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack import airflow_celery, airflow_local
from stack.supervisor import Supervisor
from tests.conftest import free_port
from tests.dags.airflow_harness import (
    AirflowApi,
    failure_report,
    listening_addresses,
    retraining_two_ingestions_and_a_backfill_at_once,
    session_pids,
)
from tests.dags.conftest import make_dvc_project, run, seed_history, wait_until
from tests.replay_server import ReplayServer, open_meteo_handler

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

INGEST_BATCH_SIZE = 4  # locations per mapped ingest task
BATCH_LOCATIONS = 1  # locations per mapped preprocess / predict task
OPEN_METEO_PATHS = ("/v1/air-quality", "/v1/forecast", "/v1/archive")


def all_services(paths: ProjectPaths) -> list[str]:
    return [airflow_celery.POSTGRES, airflow_celery.REDIS, *airflow_local.SERVICES,
            *(airflow_celery.service_name(w) for w in airflow_celery.WORKERS)]


@pytest.fixture(scope="module")
def replay():
    with ReplayServer() as server:
        for path in OPEN_METEO_PATHS:
            server.route(path, open_meteo_handler())
        yield server


@pytest.fixture(scope="module")
def celery_airflow(pushgateway, monkeypatch_module, replay):
    # PostgreSQL runs as `postgres` when the tests run as root: the project must be reachable
    # for it (pytest's own temporary directories are 0700)
    top = Path(tempfile.mkdtemp(prefix="aq-celery-"))
    top.chmod(0o711)
    root = make_dvc_project(top / "project")
    seed_history(root)
    monkeypatch_module.setenv("AQ_TASK_RETRIES", "0")
    # only the runs the tests trigger: no scheduled run for the current hour or night
    monkeypatch_module.setenv("AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE", "False")
    monkeypatch_module.setenv("AQ_INGEST_BATCH_SIZE", str(INGEST_BATCH_SIZE))
    monkeypatch_module.setenv("AQ_BATCH_LOCATIONS", str(BATCH_LOCATIONS))
    for path in OPEN_METEO_PATHS:  # the quota test's live source, answered on loopback
        name = path.rsplit("/", 1)[1].upper().replace("-", "_")
        monkeypatch_module.setenv(f"AQ_OPEN_METEO_{name}_URL", replay.url(path))
    paths = ProjectPaths(root)
    ports = Ports(airflow=free_port(), pushgateway=pushgateway.port, postgres=free_port(),
                  redis=free_port())
    started = time.monotonic()
    try:
        info = airflow_celery.start(paths, ports)
        startup_s = time.monotonic() - started
        supervisor = Supervisor(paths.stack_dir)
        assert all(supervisor.is_running(n) for n in all_services(paths))
        # supervisord leads the session every program (and every task) lives in
        yield {"paths": paths, "ports": ports, "info": info, "startup_s": startup_s,
               "leaders": [supervisor.daemon_pid()]}
    finally:
        airflow_celery.stop(paths)
        shutil.rmtree(top, ignore_errors=True)  # the project and its DVC remote


@pytest.fixture(scope="module")
def api(celery_airflow) -> AirflowApi:
    info = celery_airflow["info"]
    client = AirflowApi(info["airflow UI"], info["airflow user"], info["airflow password"])
    client.wait_parsed()
    return client


def worker_hosts() -> set[str]:
    return {f"{worker}@{socket.getfqdn()}" for worker in airflow_celery.WORKERS}


def test_everything_binds_loopback_and_secrets_stay_off_command_lines(celery_airflow, api):
    paths, ports = celery_airflow["paths"], celery_airflow["ports"]
    layout = airflow_celery.Layout(paths.stack_dir)
    assert api.call("GET", "/importErrors")["total_entries"] == 0
    pids = session_pids(celery_airflow["leaders"])
    assert listening_addresses(pids) == {f"127.0.0.1:{ports.airflow}",
                                         f"127.0.0.1:{ports.postgres}", f"127.0.0.1:{ports.redis}"}
    # the generated passwords: private files, in no process's command line
    db_password = layout.secret_file("postgres").read_text().strip()
    redis_password = layout.secret_file("redis").read_text().strip()
    for private in (layout.secret_file("postgres"), layout.secret_file("redis"),
                    layout.redis_config, paths.airflow_home / "airflow.cfg",
                    *paths.stack_dir.glob("supervisor/programs/*.conf")):  # workers' Redis URL
        assert private.stat().st_mode & 0o077 == 0, private
    assert layout.secrets_dir.stat().st_mode & 0o077 == 0
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert db_password not in cmdline, cmdline[:200]
        assert redis_password not in cmdline, cmdline[:200]
    logs = sorted((paths.stack_dir / "logs").glob("*.log"))
    assert {f"{n}.log" for n in ("postgres", "redis", "airflow-celery-worker1")} <= {
        p.name for p in logs}
    for log_file in logs:  # private, and no service printed a password
        assert log_file.stat().st_mode & 0o777 == 0o600, log_file
        text = log_file.read_text(errors="replace")
        for secret in (db_password, redis_password, celery_airflow["info"]["airflow password"]):
            assert secret not in text, log_file
    # the database and the broker let nobody in without them
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=ports.postgres, user="airflow",
                         password="not-the-password", dbname="airflow", connect_timeout=5)
    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(host="127.0.0.1", port=ports.postgres, user="postgres",
                         dbname="postgres", connect_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=ports.redis, socket_timeout=5).ping()
    psycopg2.connect(host="127.0.0.1", port=ports.postgres, user="airflow", password=db_password,
                     dbname="airflow", connect_timeout=5).close()
    # what Airflow itself runs on
    cfg = airflow_local._config(paths)
    assert cfg.get("core", "executor") == "CeleryExecutor"
    assert cfg.get("database", "sql_alchemy_conn").startswith("postgresql+psycopg2://airflow:")
    assert cfg.get("celery", "broker_url").startswith("redis://:")
    assert airflow_celery.running_profile(paths) == "celery"
    print(f"celery profile started in {celery_airflow['startup_s']:.1f} s")


def test_retraining_two_ingestions_and_a_backfill_at_once_share_dvc_losing_nothing(
        celery_airflow, api, pushgateway):
    """The SQLite profile's scenario on PostgreSQL + Celery: spread over both workers, no 503."""
    task_instances = retraining_two_ingestions_and_a_backfill_at_once(
        celery_airflow["paths"], api, pushgateway, retry_503=False)
    hosts = {ti["hostname"] for ti in task_instances}
    assert hosts == worker_hosts(), hosts  # every task ran on a worker, and both worked
    assert {ti["queue"] for ti in task_instances} == {"default"}


def test_preprocess_and_predict_batches_spread_over_both_workers(celery_airflow, api):
    """Six locations, one per batch: the mapped batches run on both workers, and the stages
    they make up are recorded in dvc.lock as if `dvc repro` had run them."""
    paths = celery_airflow["paths"]
    root = paths.root
    params = yaml.safe_load(paths.params.read_text())
    kept = paths.params.read_text()
    extra = [{"id": f"town{i}", "name": f"Town {i}", "latitude": 20.0 + 7 * i,
              "longitude": -60.0 + 25 * i, "timezone": "UTC"} for i in range(4)]
    params["locations"] = params["locations"][:2] + extra
    paths.params.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        env = {**os.environ, "AQ_PROJECT_DIR": str(root)}
        env.pop("AQ_PUSHGATEWAY_URL", None)
        run([sys.executable, "-m", "pipeline", "backfill", "--locations",
             ",".join(e["id"] for e in extra)], cwd=root, env=env)
        run(["dvc", "add", "-q", "data"], cwd=root, env=env)
        airflow_local.set_paused(paths, False, ["aq_retrain", "aq_predict"])
        retrain = [("aq_retrain", api.trigger("aq_retrain", None))]
        assert set(api.wait_finished(retrain).values()) == {"success"}, \
            failure_report(paths, retrain)
        predict = [("aq_predict", api.trigger("aq_predict", None))]
        assert set(api.wait_finished(predict).values()) == {"success"}, \
            failure_report(paths, predict)

        for (dag_id, run_id), stage in ((retrain[0], "preprocess"), (predict[0], "predict")):
            tis = [ti for ti in api.task_instances(dag_id, run_id)
                   if ti["task_id"] == f"{stage}_batch"]
            assert len(tis) == 6, stage
            assert {ti["state"] for ti in tis} == {"success"}
            assert {ti["hostname"] for ti in tis} == worker_hosts(), stage
        ids = [loc["id"] for loc in params["locations"]]
        assert sorted(p.name for p in (root / "build" / "features").iterdir()) == sorted(
            f"location={i}" for i in ids)
        # every location is forecast, or withheld with its reason (incomplete latest inputs)
        latest = pd.read_parquet(paths.latest_predictions)
        withheld = json.loads(paths.forecast_report.read_text())["withheld"]
        assert set(latest["location_id"]) | set(withheld) == set(ids), withheld
        assert not set(latest["location_id"]) & set(withheld)
        assert len(set(latest["location_id"])) >= len(ids) - 1, withheld
        assert not (paths.predictions_dir / "pending").exists()
        status = run(["dvc", "status", "preprocess", "train", "evaluate", "promote", "predict"],
                     cwd=root).stdout
        assert "up to date" in status, status
    finally:
        paths.params.write_text(kept)
        # aq_retrain stays as the scenario left it (unpaused): the stop test triggers it
        airflow_local.set_paused(paths, True, ["aq_predict"])


def test_a_providers_quota_holds_for_both_workers_together(celery_airflow, api, replay):
    """Open-Meteo at 2 requests/s for the whole deployment, with tasks running on two workers.

    Two ingestion runs of eight locations map to four tasks of four locations
    (eight requests each: pollution and weather per location, each one window
    from ``source.start``); per-process limits would let the parallel tasks
    together send up to four times the quota.
    """
    paths = celery_airflow["paths"]
    rate = 2.0
    params = yaml.safe_load(paths.params.read_text())
    extra = [{"id": f"city{i}", "name": f"City {i}", "latitude": 10.0 + 5 * i,
              "longitude": 5.0 * i, "timezone": "UTC"} for i in range(6)]
    params["locations"] = params["locations"][:2] + extra
    params["source"]["kind"] = "open_meteo"
    params["source"]["open_meteo"] = {"requests_per_second": rate, "locations_per_request": 1,
                                      "max_retries": 0}
    paths.params.write_text(yaml.safe_dump(params, sort_keys=False))
    replay.requests.clear()

    hours = ("2025-02-10T08:00:00Z", "2025-02-10T09:00:00Z")
    airflow_local.set_paused(paths, False, ["aq_ingest"])  # if the scenario did not
    runs = [("aq_ingest", api.trigger("aq_ingest", hour)) for hour in hours]
    states = api.wait_finished(runs)
    assert set(states.values()) == {"success"}, failure_report(paths, runs)

    ingest_tis = [ti for _, run_id in runs for ti in api.task_instances("aq_ingest", run_id)
                  if ti["task_id"] == "ingest"]
    assert len(ingest_tis) == 4
    assert {ti["hostname"] for ti in ingest_tis} == worker_hosts()  # in parallel on both
    starts = sorted(r.at for r in replay.requests if r.path in OPEN_METEO_PATHS)
    assert len(starts) == 2 * 4 * 4  # pollution + weather, per location and hour
    # any 2 s holds at most the quota's share, with 0.5 s for a process woken late
    window, jitter = 2.0, 0.5
    busiest = max(sum(1 for t in starts[i:] if t < start + window)
                  for i, start in enumerate(starts))
    assert busiest <= rate * (window + jitter) + 1, f"{busiest} requests within {window} s"
    assert starts[-1] - starts[0] >= (len(starts) - 1) / rate - jitter
    # a location new to the source catches up from source.start: one window per request
    february = set(pd.date_range("2025-02-01", "2025-02-10T08:00", freq="h", tz="UTC"))
    for loc in ("berlin", "city5"):
        part = paths.raw_dir / "source=open_meteo" / f"location={loc}" / "month=2025-02.parquet"
        assert set(pd.read_parquet(part, columns=["time"])["time"]) == february, loc


def test_stop_leaves_nothing_behind_even_mid_run(celery_airflow, api):
    """Stopping while a task runs on a worker ends it, the workers, Airflow, Redis, PostgreSQL."""
    paths, ports = celery_airflow["paths"], celery_airflow["ports"]
    airflow_local.set_paused(paths, False, ["aq_retrain"])  # if the scenario did not
    run_id = api.trigger("aq_retrain", None)
    wait_until(lambda: [ti for ti in api.task_instances("aq_retrain", run_id)
                        if ti["state"] == "running"], 120, interval=0.5,
               what="a running retraining task")

    stopped = airflow_celery.stop(paths)

    assert sorted(stopped) == sorted(all_services(paths))
    assert session_pids(celery_airflow["leaders"]) == []
    for port in (ports.airflow, ports.postgres, ports.redis):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), 2).close()
    assert "database system is shut down" in Supervisor(paths.stack_dir).log_tail(
        airflow_celery.POSTGRES)
    assert airflow_celery.stop(paths) == []  # idempotent
    assert os.listdir(paths.stack_dir / "postgres" / "data")  # the cluster is kept
