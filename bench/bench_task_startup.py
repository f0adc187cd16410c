"""Task start-up on the real scheduler: the CPU an Airflow task costs, with and without
stack/preload.py (the scheduler's LocalExecutor forks tasks with the libraries imported).

Starts the local profile (``stack/airflow_local.py``: SQLite, LocalExecutor, supervisord) on a
temporary project of ``--locations`` synthetic places with ``AQ_INGEST_BATCH_SIZE=1`` (one
mapped ingestion task per place), triggers ``aq_ingest`` for ``--runs`` hours one after the
other and sums the CPU (user + system, /proc) of the scheduler's process tree over the runs:
the scheduler, its executor workers and every task they forked and reaped. Each arrangement
gets a fresh stack and project; they alternate (``--rounds``) so the machine's load hits both.

    .venv/bin/python bench/bench_task_startup.py                  # 2 rounds x 2 arrangements
    .venv/bin/python bench/bench_task_startup.py --locations 12 --runs 2 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.paths import ProjectPaths  # noqa: E402
from pipeline.settings import Ports  # noqa: E402
from stack import airflow_local  # noqa: E402
from stack.supervisor import Supervisor  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.dags.airflow_harness import AirflowApi, failure_report  # noqa: E402
from tests.dags.conftest import Pushgateway, make_dvc_project  # noqa: E402


def places(n: int) -> list[dict]:
    return [{"id": f"town{i}", "name": f"Town {i}", "latitude": 10.0 + 3 * i,
             "longitude": -50.0 + 7 * i, "timezone": "UTC"} for i in range(n)]


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants, with the children each reaped."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def one(arrangement: str, top: Path, n_places: int, runs: int, pushgateway: int) -> dict:
    root = make_dvc_project(top / arrangement / "project", {
        "locations": places(n_places),
        "source": {"kind": "synthetic", "start": "2025-01-01", "end": "2025-01-08"}})
    env = {**os.environ, "AQ_PROJECT_DIR": str(root)}
    env.pop("AQ_PUSHGATEWAY_URL", None)
    subprocess.run([sys.executable, "-m", "pipeline", "backfill"], cwd=root, env=env,
                   check=True, capture_output=True, timeout=600)
    subprocess.run(["dvc", "add", "-q", "data"], cwd=root, env=env, check=True, timeout=300)
    paths = ProjectPaths(root)
    ports = Ports(airflow=free_port(), pushgateway=pushgateway)
    kept = airflow_local.airflow_preloaded
    if arrangement == "plain":
        airflow_local.airflow_preloaded = lambda: [airflow_local.airflow_bin()]
    try:
        info = airflow_local.start(paths, ports)
    finally:
        airflow_local.airflow_preloaded = kept
    try:
        api = AirflowApi(info["airflow UI"], info["airflow user"], info["airflow password"])
        api.wait_parsed()
        airflow_local.set_paused(paths, False, ["aq_ingest"])
        scheduler = Supervisor(paths.stack_dir).pid("airflow-scheduler")
        time.sleep(5)  # the executor's workers forked
        before = tree_cpu(scheduler)
        started = time.monotonic()
        tasks = 0
        for hour in range(runs):
            logical = f"2025-01-08T{hour:02d}:00:00Z"
            run_id = api.trigger("aq_ingest", logical)
            states = api.wait_finished([("aq_ingest", run_id)])
            assert set(states.values()) == {"success"}, failure_report(
                paths, [("aq_ingest", run_id)])
            tasks += len(api.task_instances("aq_ingest", run_id))
        return {"arrangement": arrangement, "cpu_s": tree_cpu(scheduler) - before,
                "wall_s": time.monotonic() - started, "task_instances": tasks,
                "rss_mb": psutil.Process(scheduler).memory_info().rss / 2**20}
    finally:
        airflow_local.stop(paths)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--locations", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ["AQ_INGEST_BATCH_SIZE"] = "1"
    os.environ["AQ_TASK_RETRIES"] = "0"
    os.environ["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] = "False"
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    print(f"load average at start: {os.getloadavg()}")
    top = Path(tempfile.mkdtemp(prefix="aq-bench-tasks-"))
    gateway = Pushgateway(top / "pushgateway")  # the steps push their metrics, as in the stack
    results = []
    try:
        for r in range(args.rounds):
            for arrangement in (("plain", "preload") if r % 2 == 0 else ("preload", "plain")):
                result = one(arrangement, top / f"r{r}", args.locations, args.runs,
                             gateway.port)
                results.append(result)
                each = result["cpu_s"] / result["task_instances"]
                print(f"round {r} {arrangement:8s} {result['task_instances']:3d} task instances"
                      f"  CPU {result['cpu_s']:6.1f} s ({each:.2f} s each)"
                      f"  wall {result['wall_s']:5.1f} s  scheduler RSS "
                      f"{result['rss_mb']:.0f} MB  load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        gateway.supervisor.stop_all()
        shutil.rmtree(top, ignore_errors=True)
    for arrangement in ("plain", "preload"):
        mine = [r for r in results if r["arrangement"] == arrangement]
        per_task = sum(r["cpu_s"] for r in mine) / sum(r["task_instances"] for r in mine)
        print(f"{arrangement:8s} mean CPU per task instance {per_task:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
