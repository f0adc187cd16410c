"""MLflow tracking cost per step: what logging a run adds to ``make run``'s steps.

It starts a real ``mlflow server`` from ``.venv-mlflow`` (stack/mlflow_local.py, as
``make run`` does) on a free port, builds a temporary project with the repo's default
params.yaml (5 cities, one synthetic year: the model ``make run`` trains) and runs ingest,
preprocess, then train, evaluate, backtest and promote with ``AQ_MLFLOW_TRACKING_URI`` set and
``-v``: each tracked step logs the wall time of its MLflow call (``mlflow: <step> run logged
in X s``: the REST calls, the artifact uploads, ``git rev-parse``). Then the same four steps
with the server down (a closed port: the run is queued), then once more with the server up
(the queued runs are logged first). Printed per step: the step's wall time and the tracking
time, and the bytes uploaded.

    .venv/bin/python bench/bench_tracking.py                  # default project
    .venv/bin/python bench/bench_tracking.py --project DIR    # a project with data already
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.paths import ProjectPaths  # noqa: E402
from pipeline.settings import Ports  # noqa: E402
from stack import mlflow_local  # noqa: E402

TRACKED = ("train", "evaluate", "backtest", "promote")
LINE = re.compile(r"mlflow: (\w+) run (logged|queued|off|not logged) in ([0-9.]+) s")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step(project: Path, name: str, uri: str) -> tuple[float, list[tuple[str, str, float]]]:
    env = {**os.environ, "AQ_PROJECT_DIR": str(project), "AQ_MLFLOW_TRACKING_URI": uri,
           "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1"}
    env.pop("AQ_PUSHGATEWAY_URL", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "-v", name], cwd=project, env=env,
                          capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return wall, [(m[0], m[1], float(m[2])) for m in LINE.findall(proc.stderr)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_tracking_"))
    print(f"work dir {work}; load average {Path('/proc/loadavg').read_text().split()[:3]}",
          flush=True)
    server_paths = ProjectPaths(work / "mlflow")
    ports = Ports(mlflow=free_port())
    began = time.perf_counter()
    mlflow_local.start(server_paths, ports, timeout=300)
    startup = time.perf_counter() - began
    uri = ports.url("mlflow")
    results: dict = {"server_start_s": round(startup, 1), "phases": {}}
    try:
        if args.project:
            project = args.project.resolve()
        else:
            project = work / "project"
            project.mkdir()
            shutil.copytree(REPO / "pipeline", project / "pipeline",
                            ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy(REPO / "params.yaml", project / "params.yaml")
            for name in ("ingest", "preprocess"):
                step(project, name, "off")
        for phase, target in (("up", uri), ("down", f"http://127.0.0.1:{free_port()}"),
                              ("back", uri)):
            rows = []
            for name in TRACKED:
                wall, lines = step(project, name, target)
                rows.append({"step": name, "wall_s": round(wall, 2),
                             "tracking": [{"run": s, "outcome": o, "s": t}
                                          for s, o, t in lines]})
                print(f"{phase:<5} {name:<9} step {wall:7.2f} s   tracking "
                      + ", ".join(f"{s} {o} {t:.3f} s" for s, o, t in lines), flush=True)
            results["phases"][phase] = rows
        skops = sorted((project / "models" / "registry").glob("*/model.skops"))
        results["model_skops_bytes"] = skops[-1].stat().st_size if skops else None
        results["mlflow_rss_mb"] = mlflow_rss(server_paths)
    finally:
        mlflow_local.stop(server_paths)
    print(json.dumps({k: v for k, v in results.items() if k != "phases"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def mlflow_rss(paths: ProjectPaths) -> dict[int, float]:
    """RSS (MiB) of the server's processes: supervisord's program and its children."""
    from stack.supervisor import Supervisor

    leader = Supervisor(paths.stack_dir).pid(mlflow_local.NAME)
    family, out = {leader}, {}
    for entry in sorted(Path("/proc").iterdir(), key=lambda p: p.name):
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) in family:
                family.add(int(entry.name))
    for pid in family:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS"):
                    out[pid] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            continue
    return out


if __name__ == "__main__":
    sys.exit(main())
