"""What the real-scheduler tests share: the REST client, process and socket checks, the scenario.

Both profiles run the same scenario (:func:`retraining_two_ingestions_and_a_backfill_at_once`):
``tests/dags/test_airflow_scheduler.py`` on SQLite + LocalExecutor, and
``tests/dags/test_airflow_celery.py`` on PostgreSQL + CeleryExecutor with two workers.
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path

import pandas as pd
import requests

from pipeline.paths import ProjectPaths
from stack import airflow_local
from tests.dags.conftest import run, wait_until

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
        # a GET that times out (the API server starved on a loaded machine) is asked again,
        # at most three times: reading twice changes nothing
        for attempt in range(3 if method == "GET" else 1):
            try:
                reply = self.session.request(method, f"{self.base}/api/v2{path}", timeout=30,
                                             **kwargs)
                break
            except requests.Timeout:
                if attempt == 2 or method != "GET":
                    raise
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

    def wait_parsed(self, dag_ids=airflow_local.DAG_IDS, timeout: float = 120) -> None:
        for dag_id in dag_ids:  # parsed by the DAG processor
            wait_until(lambda d=dag_id: self.session.get(
                f"{self.base}/api/v2/dags/{d}", timeout=10).ok, timeout, what=f"{dag_id} parsed")

    def wait_finished(self, runs: list[tuple[str, str]], timeout: float = RUN_TIMEOUT_S
                      ) -> dict[str, str]:
        def finished():
            states = {run_id: self.run_state(dag_id, run_id) for dag_id, run_id in runs}
            return states if all(s in ("success", "failed") for s in states.values()) else None

        return wait_until(finished, timeout, interval=2, what=f"{len(runs)} runs to finish")


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


def create_backfill(api: AirflowApi, body: dict, *, retry_503: bool) -> dict:
    """POST /backfills. On SQLite Airflow answers 503 while the scheduler holds the write lock
    (``retry_503``: try again); on PostgreSQL the first answer must be the backfill."""
    if not retry_503:
        reply = api.session.post(f"{api.base}/api/v2/backfills", json=body, timeout=30)
        assert reply.ok, f"backfill refused: {reply.status_code} {reply.text[:300]}"
        return reply.json()

    def create():
        reply = api.session.post(f"{api.base}/api/v2/backfills", json=body, timeout=30)
        assert reply.ok or reply.status_code == 503, reply.text
        return reply.json() if reply.ok else None

    return wait_until(create, 60, interval=1, what="the backfill to be created")


def retraining_two_ingestions_and_a_backfill_at_once(paths: ProjectPaths, api: AirflowApi,
                                                     pushgateway, *, retry_503: bool
                                                     ) -> list[dict]:
    """Retraining, two triggered hours and a backfill of two more, all started together.

    Asserts that all five runs succeed, no two DVC tasks overlapped, every hour
    of both locations is stored, versioned and pushed, and the retraining's steps
    pushed their metrics. Returns every task instance of the five runs.
    """
    root = paths.root
    assert all(api.call("GET", f"/dags/{d}")["is_paused"] for d in airflow_local.DAG_IDS)
    # what `make run` does once its first pipeline run is done; aq_predict stays paused here
    airflow_local.set_paused(paths, False, ["aq_retrain", "aq_ingest"])
    triggered_at = datetime.now(UTC).timestamp()
    runs = [("aq_retrain", api.trigger("aq_retrain", None))]
    runs += [("aq_ingest", api.trigger("aq_ingest", hour)) for hour in INGEST_HOURS]
    # `airflow backfill create` (here via REST): one run per hour of the range
    backfill = create_backfill(api, {"dag_id": "aq_ingest", "max_active_runs": 2,
                                     "from_date": BACKFILL[0], "to_date": BACKFILL[1]},
                               retry_503=retry_503)

    def backfill_runs():
        found = api.call("GET", "/dags/aq_ingest/dagRuns",
                         params={"run_type": "backfill"})["dag_runs"]
        return found if len(found) == 2 else None

    runs += [("aq_ingest", r["dag_run_id"])
             for r in wait_until(backfill_runs, 60, what="the backfill's runs")]

    states = api.wait_finished(runs)
    assert set(states.values()) == {"success"}, failure_report(paths, runs)
    wait_until(lambda: api.call("GET", f"/backfills/{backfill['id']}")["completed_at"], 60,
               what="the backfill to be marked complete")

    # the pool kept DVC commands apart: no two dvc-pool task instances overlapped
    task_instances = [ti for dag_id, run_id in runs for ti in api.task_instances(dag_id, run_id)]
    dvc_tis = [ti for ti in task_instances if ti["pool"] == "dvc"]
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
        stored = set(pd.read_parquet(part, columns=["time"])["time"])
        assert stored == expected, f"{loc}: stored {sorted(stored)}"
    assert "up to date" in run(["dvc", "status", "data.dvc"], cwd=root).stdout
    assert "in sync" in run(["dvc", "status", "-c", "-r", "local", "data.dvc"], cwd=root).stdout

    # the retraining's steps pushed their metrics during this run
    for step in DVC_STAGES:
        assert pushgateway.value("aq_step_success", step=step) == 1, step
        pushed = pushgateway.value("push_time_seconds", step=step)
        assert pushed is not None
        assert pushed >= triggered_at, step
    assert (root / "models" / "champion.json").is_file()
    return task_instances
