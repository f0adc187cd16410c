"""Celery scale-out benchmark: the same ``aq_retrain`` run on W workers x C task processes each.

For each configuration of ``--configs`` (``WxC``: workers x concurrency, default
``1x2,2x2``) it starts the scale-out profile (``stack/airflow_celery.py``:
PostgreSQL, Redis, the Airflow parts and W Celery workers, every one on a free
127.0.0.1 port, plus a Pushgateway for the steps' metrics), triggers ``aq_retrain``
through Airflow's REST API, waits for it, checks that every task succeeded, and
records the DAG run's wall time (its start and end as Airflow recorded them), each
task instance's start, end, duration and worker (``hostname``), and the load
average; then it stops everything and puts the project back in the state it had
before the first run, so every configuration does the same work: same raw data,
same params, the same number of mapped ``preprocess_batch`` tasks, a full retrain
(no ``dvc.lock``, no DVC run cache, no outputs from an earlier run).

The project is a bench project of ``bench/bench_pipeline.py`` (N generated
locations x Y years of the synthetic source, the repo's params otherwise) under
git + DVC with a local remote. Its raw data is either ingested here
(``--locations N --years Y``: ``python -m pipeline ingest``, ~25 minutes at 500 x 2
on the quiet 2-core machine) or copied from a project kept by
``bench/bench_pipeline.py --keep --workdir W`` (``--data-from W/project_500x2``).

    .venv/bin/python bench/bench_celery.py --locations 10 --years 1 --batch-locations 2
    .venv/bin/python bench/bench_celery.py --data-from /tmp/b500/project_500x2 \\
        --configs 1x2,2x2 --repeats 2 --out r.json --out r.md

Output: per run a table of its tasks (worker, start offset, duration), per
configuration the wall time, the critical path (the serial chain of tasks plus the
longest batch) against the parallel part (the mapped batches), and the ratio
``wall(1 worker) / wall(2 workers)`` for each concurrency measured both ways.
Bounded: ``--timeout`` for the whole script (ingest, starts, runs), every
service on loopback, everything stopped on every exit (an error, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_pipeline, run as a script
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the checkout's stack/ launcher

from bench_pipeline import machine, make_bench_project, step_env  # noqa: E402

from pipeline.paths import ProjectPaths  # noqa: E402
from pipeline.settings import Ports  # noqa: E402
from stack import airflow_celery, airflow_local  # noqa: E402
from stack.supervisor import Program, Supervisor  # noqa: E402

DAG_ID = "aq_retrain"
MAPPED_TASK = "preprocess_batch"  # the only mapped (parallel) tasks of aq_retrain
POLL_S = 2.0
# what a retraining run writes or changes in the project; restored before every run
KEPT = {"data", ".stack", ".airflow"}  # the raw data, the services' state (database, logs)


class BenchError(RuntimeError):
    """The benchmark cannot go on: bad input, a failed or timed-out run, a service error."""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Config:
    workers: int
    concurrency: int

    @property
    def label(self) -> str:
        return f"{self.workers}x{self.concurrency}"

    @property
    def scale(self) -> airflow_celery.Scale:
        return airflow_celery.Scale(self.workers, self.concurrency)


def parse_configs(text: str) -> list[Config]:
    configs = []
    for item in text.split(","):
        try:
            workers, concurrency = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"configuration {item!r}: expected WORKERSxCONCURRENCY, e.g. 2x2") from None
        if not 1 <= workers <= 8 or not 1 <= concurrency <= 8:
            raise argparse.ArgumentTypeError(
                f"configuration {item!r}: workers and concurrency must be 1..8")
        configs.append(Config(workers, concurrency))
    if len(set(configs)) != len(configs):
        raise argparse.ArgumentTypeError(f"configurations {text!r}: one is given twice")
    return configs


class Deadline:
    """The whole script's time budget."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.total = seconds

    def left(self, what: str) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise BenchError(f"--timeout {self.total:.0f}s reached before {what}")
        return left


# ------------------------------------------------------------------ the project


def run(cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(cmd)} did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise BenchError(f"{' '.join(cmd)} failed ({proc.returncode}) in {cwd}:\n{tail}")
    return proc.stdout


def size_of(params_file: Path) -> tuple[int, int]:
    """(locations, years) of a bench project's params.yaml."""
    params = yaml.safe_load(params_file.read_text())
    start = datetime.fromisoformat(str(params["source"]["start"]))
    end = datetime.fromisoformat(str(params["source"]["end"]))
    return len(params["locations"]), end.year - start.year


def check_same_data_params(ours: Path, theirs: Path) -> None:
    """The copied raw data must be what our params describe: same places, same window."""
    a, b = yaml.safe_load(ours.read_text()), yaml.safe_load(theirs.read_text())
    for key, what in (("locations", "locations"), ("source", "source (kind, window)")):
        mine, other = a.get(key), b.get(key)
        if key == "source":
            mine = {k: mine.get(k) for k in ("kind", "start", "end")}
            other = {k: (other or {}).get(k) for k in ("kind", "start", "end")}
        if mine != other:
            raise BenchError(f"--data-from: {theirs} has other {what} than the bench project "
                             f"made for the same size; use a project kept by "
                             f"bench/bench_pipeline.py --keep, or --locations/--years")


def build_project(workdir: Path, args: argparse.Namespace, deadline: Deadline) -> Path:
    """The bench project with its raw data, under git + DVC (data.dvc, remote ``local``)."""
    if args.data_from is not None:
        source = args.data_from.resolve()
        if not (source / "params.yaml").is_file() or not (source / "data" / "raw").is_dir():
            raise BenchError(f"--data-from {source}: no params.yaml and data/raw there (a "
                             "project kept by bench/bench_pipeline.py --keep is "
                             "W/project_<N>x<Y>)")
        n_locations, years = size_of(source / "params.yaml")
    else:
        n_locations, years = args.locations, args.years
    target = workdir / f"project_{n_locations}x{years}"
    if target.exists():
        raise BenchError(f"{target} exists: give an empty or new --workdir")
    root = make_bench_project(target, n_locations, years)
    env = step_env(root)  # with the venv's dvc first on PATH, activated or not
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if args.data_from is not None:
        check_same_data_params(root / "params.yaml", source / "params.yaml")
        log(f"copying {source / 'data'} (no ingest)")
        shutil.copytree(source / "data", root / "data", symlinks=True)
    else:
        log(f"ingesting {n_locations} locations x {years} year(s)")
        started = time.monotonic()
        run([sys.executable, "-m", "pipeline", "ingest"], root,
            deadline.left("ingest"), env=env)
        log(f"ingested in {time.monotonic() - started:.0f}s")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"],
                ["dvc", "remote", "add", "-d", "local", str(workdir / "dvc-remote")],
                ["dvc", "add", "-q", "data"]):
        run(cmd, root, deadline.left("setting up DVC"), env=env)
    return root


def tree(root: Path, skip: set[str]) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file under root, top-level ``skip`` aside."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel == Path("."):
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            found[str(rel / name)] = (st.st_size, st.st_mtime_ns)
    return found


class Baseline:
    """The project as it was before the first run; :meth:`restore` puts it back.

    The raw data is left in place (and checked unchanged); DVC's cache keeps the objects
    ``dvc add data`` put there and loses everything a run added (outputs and the run
    cache, which would let ``dvc repro`` restore the outputs instead of training); the
    rest of the project (params, dvc.yaml, .gitignore, .dvc/tmp, build/ingest_state)
    is a copy.
    """

    def __init__(self, root: Path, store: Path) -> None:
        self.root, self.store = root, store
        self.data = tree(root / "data", set())
        self.cache = set(tree(root / ".dvc" / "cache", set()))
        shutil.copytree(root, store, symlinks=True,
                        ignore=lambda d, names: [n for n in names if Path(d) == root
                                                 and n in KEPT]
                        + [n for n in names if Path(d) == root / ".dvc" and n == "cache"])

    def restore(self) -> None:
        if tree(self.root / "data", set()) != self.data:
            raise BenchError(f"{self.root / 'data'} changed during a run: the runs would not "
                             "do the same work")
        for entry in self.root.iterdir():
            if entry.name in KEPT:
                continue
            if entry.name == ".dvc":
                for inner in entry.iterdir():
                    if inner.name != "cache":
                        _remove(inner)
            else:
                _remove(entry)
        cache = self.root / ".dvc" / "cache"
        for rel in set(tree(cache, set())) - self.cache:
            (cache / rel).unlink()
        for dirpath, _, _ in sorted(os.walk(cache), reverse=True):  # now-empty directories
            if Path(dirpath) != cache and not os.listdir(dirpath):
                os.rmdir(dirpath)
        for entry in self.store.iterdir():
            target = self.root / entry.name
            if entry.name == ".dvc":
                for inner in entry.iterdir():
                    _copy(inner, target / inner.name)
            else:
                _copy(entry, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _copy(source: Path, target: Path) -> None:
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target, follow_symlinks=False)


# ------------------------------------------------------------------ Airflow


class Api:
    """Airflow's REST API v2 with a JWT; every call bounded."""

    def __init__(self, base_url: str, user: str, password: str) -> None:
        import requests

        self.base = base_url
        reply = requests.post(f"{base_url}/auth/token", timeout=30,
                              json={"username": user, "password": password})
        if not reply.ok:
            raise BenchError(f"login to {base_url} failed: HTTP {reply.status_code}")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"

    def call(self, method: str, path: str, ok_404: bool = False, **kwargs) -> dict | None:
        reply = self.session.request(method, f"{self.base}/api/v2{path}", timeout=30, **kwargs)
        if ok_404 and reply.status_code == 404:
            return None
        if not reply.ok:
            raise BenchError(f"{method} {path}: HTTP {reply.status_code} {reply.text[:300]}")
        return reply.json()

    def task_instances(self, run_id: str) -> list[dict]:
        found: list[dict] = []
        while True:
            page = self.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances",
                             params={"limit": 100, "offset": len(found)})
            found += page["task_instances"]
            if len(found) >= page["total_entries"] or not page["task_instances"]:
                return found


def wait_for(predicate, seconds: float, what: str, interval: float = 1.0):
    end = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise BenchError(f"timed out after {seconds:.0f}s waiting for {what}")
        time.sleep(interval)


def ts(value: str | None) -> float | None:
    return None if value is None else datetime.fromisoformat(value).timestamp()


def one_run(paths: ProjectPaths, ports: Ports, config: Config, expected_batches: int,
            deadline: Deadline) -> dict:
    """Start the profile at this scale, run aq_retrain once, stop; what was measured."""
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        info = airflow_celery.start(paths, ports, timeout=min(300.0, deadline.left("start")),
                                    scale=config.scale)
        startup_s = time.monotonic() - started
        api = Api(info["airflow UI"], info["airflow user"], info["airflow password"])
        wait_for(lambda: api.call("GET", f"/dags/{DAG_ID}", ok_404=True),
                 min(180.0, deadline.left("parsing")), f"{DAG_ID} to be parsed")
        airflow_local.set_paused(paths, False, [DAG_ID])
        run_id = api.call("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None})[
            "dag_run_id"]
        log(f"  {config.label}: started in {startup_s:.0f}s, triggered {run_id}")
        loads = []
        while True:
            dag_run = api.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
            loads.append(os.getloadavg()[0])
            if dag_run["state"] in ("success", "failed"):
                break
            if time.monotonic() > deadline.end:
                raise BenchError(f"--timeout {deadline.total:.0f}s reached while {run_id} "
                                 f"was {dag_run['state']}")
            time.sleep(POLL_S)
        tis = api.task_instances(run_id)
        workers_seen = sorted({ti["hostname"] for ti in tis if ti["hostname"]})
    finally:
        with cleaning_up():
            stopped = airflow_celery.stop(paths)
            log(f"  {config.label}: stopped {len(stopped)} services")
    load_after = os.getloadavg()
    failed = sorted(f"{ti['task_id']}[{ti['map_index']}]={ti['state']}" for ti in tis
                    if ti["state"] != "success")
    if dag_run["state"] != "success" or failed:
        raise BenchError(f"{DAG_ID} run {run_id} ({config.label}) ended {dag_run['state']}: "
                         f"{', '.join(failed) or 'no failed task'}; task logs in "
                         f"{paths.airflow_home / 'logs' / f'dag_id={DAG_ID}' / f'run_id={run_id}'}")
    batches = [ti for ti in tis if ti["task_id"] == MAPPED_TASK]
    if len(batches) != expected_batches:
        raise BenchError(f"{run_id}: {len(batches)} {MAPPED_TASK} tasks, expected "
                         f"{expected_batches}: the runs would not do the same work")
    allowed = {f"{w}@" for w in config.scale.names}
    strays = [h for h in workers_seen if not any(h.startswith(a) for a in allowed)]
    if strays:
        raise BenchError(f"{run_id}: tasks ran on {strays}, not a worker of {config.label}")
    candidate = paths.root / "build" / "candidate"
    if not candidate.is_dir() or candidate.stat().st_mtime < ts(dag_run["start_date"]):
        raise BenchError(f"{run_id}: no candidate model trained by this run in {candidate}")
    run_start, run_end = ts(dag_run["start_date"]), ts(dag_run["end_date"])
    tasks = []
    for ti in sorted(tis, key=lambda t: (ts(t["start_date"]), t["map_index"])):
        start, end = ts(ti["start_date"]), ts(ti["end_date"])
        queued = ts(ti.get("queued_when"))
        tasks.append({
            "task_id": ti["task_id"],
            "map_index": ti["map_index"],
            "batch": ti.get("rendered_map_index"),
            "worker": (ti["hostname"] or "").split("@")[0],
            "start_s": round(start - run_start, 2),
            "end_s": round(end - run_start, 2),
            "duration_s": round(end - start, 2),
            "queued_wait_s": None if queued is None else round(start - queued, 2),
        })
    metrics = json.loads((paths.root / "metrics.json").read_text())
    return {
        "config": config.label,
        "workers": config.workers,
        "concurrency": config.concurrency,
        "run_id": run_id,
        "startup_s": round(startup_s, 1),
        "wall_s": round(run_end - run_start, 2),
        "queued_to_end_s": round(run_end - ts(dag_run["queued_at"]), 2),
        "tasks": tasks,
        **analyse(tasks, run_end - run_start),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in load_after],
        "load_1m_during": {"max": round(max(loads), 2),
                           "mean": round(statistics.fmean(loads), 2)},
        "skill": {t: {h: s["skill"] for h, s in by_h.items()} for t, by_h in metrics.items()
                  if isinstance(by_h, dict) and t != "holdout"
                  and all(isinstance(s, dict) and "skill" in s for s in by_h.values())},
    }


def analyse(tasks: list[dict], wall_s: float) -> dict:
    """Where the wall time went: the serial chain, the mapped batches, the gaps between.

    aq_retrain is one chain (plan -> batches -> preprocess -> train -> evaluate ->
    promote) whose only parallel step is the mapped batches; its critical path is the
    chain's single tasks plus the longest batch. More workers can only shorten the
    batches' span, down to that longest batch.
    """
    serial = [t for t in tasks if t["task_id"] != MAPPED_TASK]
    batches = [t for t in tasks if t["task_id"] == MAPPED_TASK]
    serial_s = sum(t["duration_s"] for t in serial)
    work_s = sum(t["duration_s"] for t in batches)
    span_s = (max(t["end_s"] for t in batches) - min(t["start_s"] for t in batches)
              if batches else 0.0)
    longest = max((t["duration_s"] for t in batches), default=0.0)
    per_worker: dict[str, dict] = {}
    for t in tasks:
        entry = per_worker.setdefault(t["worker"], {"tasks": 0, "busy_s": 0.0})
        entry["tasks"] += 1
        entry["busy_s"] = round(entry["busy_s"] + t["duration_s"], 2)
    return {
        "serial_s": round(serial_s, 2),
        "serial_by_task_s": {t["task_id"]: t["duration_s"] for t in serial},
        "batches": len(batches),
        "batch_work_s": round(work_s, 2),
        "batch_span_s": round(span_s, 2),
        "batch_longest_s": round(longest, 2),
        "batch_parallelism": round(work_s / span_s, 2) if span_s > 0 else None,
        "critical_path_s": round(serial_s + longest, 2),
        "gaps_s": round(wall_s - serial_s - span_s, 2),
        "per_worker": dict(sorted(per_worker.items())),
    }


# ------------------------------------------------------------------ report


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per configuration: the median of its runs (one run: that run)."""
    out: dict[str, dict] = {}
    for label in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == label]
        out[label] = {
            "workers": mine[0]["workers"],
            "concurrency": mine[0]["concurrency"],
            "runs": len(mine),
            **{key: round(statistics.median(r[key] for r in mine), 2)
               for key in ("wall_s", "serial_s", "batch_work_s", "batch_span_s",
                           "batch_longest_s", "critical_path_s", "gaps_s", "startup_s")},
            "wall_s_each": [r["wall_s"] for r in mine],
        }
    return out


def ratios(summary: dict[str, dict]) -> list[dict]:
    """wall(1 worker) / wall(W workers) at the same concurrency, for every W > 1 measured.

    ``span_cut``: how much faster the one-worker run would be with its batches' span cut
    to its longest batch and everything else unchanged (the most more slots give the
    batches; more slots can also hide per-task overhead, counted in the gaps).
    """
    found = []
    for base in summary.values():
        if base["workers"] != 1:
            continue
        best = base["wall_s"] - base["batch_span_s"] + base["batch_longest_s"]
        for other_label, other in summary.items():
            if other["concurrency"] == base["concurrency"] and other["workers"] > 1:
                found.append({
                    "one": f"1x{base['concurrency']}", "more": other_label,
                    "wall_ratio": round(base["wall_s"] / other["wall_s"], 3),
                    "batch_span_ratio": (round(base["batch_span_s"] / other["batch_span_s"], 3)
                                         if other["batch_span_s"] else None),
                    "serial_ratio": round(base["serial_s"] / other["serial_s"], 3),
                    # what workers can change: everything but the single tasks' own durations
                    "non_serial_ratio": (round((base["wall_s"] - base["serial_s"])
                                               / (other["wall_s"] - other["serial_s"]), 3)
                                         if other["wall_s"] > other["serial_s"] else None),
                    "batch_share_of_one": round(base["batch_span_s"] / base["wall_s"], 3),
                    "span_cut": round(base["wall_s"] / best, 3) if best > 0 else None,
                    "gaps_one_s": base["gaps_s"], "gaps_more_s": other["gaps_s"],
                    "concurrency": base["concurrency"],
                })
    return found


def same_results(runs: list[dict]) -> bool:
    """Every run's model scored the same skill: same data, same params, same training."""
    return all(r["skill"] == runs[0]["skill"] for r in runs) and bool(runs[0]["skill"])


def gantt(tasks: list[dict], wall_s: float, width: int = 60) -> list[str]:
    """One text bar per task over the run's wall time (a column = wall_s / width)."""
    scale = width / wall_s if wall_s > 0 else 0
    lines = []
    for t in tasks:
        name = t["task_id"] if t["map_index"] < 0 else f"{t['task_id']}[{t['map_index']}]"
        a = int(t["start_s"] * scale)
        b = max(a + 1, int(math.ceil(t["end_s"] * scale)))
        lines.append(f"{name[:24]:<24} {t['worker'][:8]:<8} |{' ' * a}{'#' * (b - a)}"
                     f"{' ' * max(0, width - b)}|")
    return lines


def markdown(result: dict) -> str:
    info, project = result["machine"], result["project"]
    lines = [
        f"Command: `{result['command']}`",
        "",
        f"Machine: {info['nproc']} cores ({info['cpu']}), {info['ram_gb']} GB RAM, "
        f"Python {info['python']}, scikit-learn {info['sklearn']}; OMP_NUM_THREADS="
        f"{info['omp_num_threads'] or 'unset'}. Load average at the start "
        f"{', '.join(f'{x:g}' for x in result['load_avg_start'])}.",
        "",
        f"Project: {project['locations']} locations × {project['years']} year(s), "
        f"`AQ_BATCH_LOCATIONS={project['batch_locations']}` → {project['batches']} mapped "
        f"`{MAPPED_TASK}` tasks per run; raw data {project['data_origin']}.",
        "",
    ]
    for r in result["runs"]:
        lines += [
            f"**{r['config']}** ({r['workers']} worker(s) × concurrency {r['concurrency']}), "
            f"run `{r['run_id']}`: wall **{r['wall_s']:.1f} s** (DAG run start → end), "
            f"profile started in {r['startup_s']:.0f} s; load average "
            f"{', '.join(f'{x:g}' for x in r['load_avg_before'])} before, "
            f"{', '.join(f'{x:g}' for x in r['load_avg_after'])} after, 1-min load during "
            f"the run {r['load_1m_during']['mean']:g} mean / {r['load_1m_during']['max']:g} "
            "max.",
            "",
            "| task | worker | start (s) | duration (s) | queued → start (s) |",
            "|---|---|---:|---:|---:|",
        ]
        for t in r["tasks"]:
            name = t["task_id"] if t["map_index"] < 0 else f"{t['task_id']} [{t['batch']}]"
            wait = "" if t["queued_wait_s"] is None else f"{t['queued_wait_s']:.1f}"
            lines.append(f"| {name} | {t['worker']} | {t['start_s']:.1f} | "
                         f"{t['duration_s']:.1f} | {wait} |")
        busy = ", ".join(f"{w}: {v['tasks']} tasks, {v['busy_s']:.0f} s"
                         for w, v in r["per_worker"].items())
        lines += ["", f"Per worker: {busy}.", "", "```", *gantt(r["tasks"], r["wall_s"]),
                  "```", ""]
    lines += [
        "| config | slots | runs | wall (s) | serial chain (s) | batches: work (s) | "
        "batches: span (s) | critical path (s) | gaps (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s in result["summary"].items():
        walls = " / ".join(f"{w:.1f}" for w in s["wall_s_each"])
        lines.append(f"| {label} | {s['workers'] * s['concurrency']} | {s['runs']} | "
                     f"{s['wall_s']:.1f}" + (f" ({walls})" if s["runs"] > 1 else "") +
                     f" | {s['serial_s']:.1f} | {s['batch_work_s']:.1f} | "
                     f"{s['batch_span_s']:.1f} | {s['critical_path_s']:.1f} | "
                     f"{s['gaps_s']:.1f} |")
    lines += [
        "",
        "Serial chain: the single tasks (plan, preprocess, train, evaluate, promote), which "
        "no number of workers shortens. Batches: the mapped tasks' summed durations (work) "
        "and first start → last end (span). Critical path: the serial chain plus the longest "
        "batch, the wall time with unlimited slots and no scheduling delay. Gaps: wall − "
        "serial − span (queueing, scheduler loops, task process starts)."
        + (" Several runs: medians." if any(s["runs"] > 1 for s in result["summary"].values())
           else ""),
        "",
    ]
    for q in result["ratios"]:
        span = "n/a" if q["batch_span_ratio"] is None else f"{q['batch_span_ratio']:.2f}"
        c, cores = q["concurrency"], info["nproc"]
        slots = (f"{q['one']} already runs {c} tasks at once on the {cores} cores: more "
                 "workers on this host add task slots, not cores."
                 if c >= cores else
                 f"{q['one']} runs {c} task(s) at once on {cores} cores: more workers let "
                 "the batches use more of the cores.")
        rest = "n/a" if q["non_serial_ratio"] is None else f"{q['non_serial_ratio']:.2f}"
        lines += [
            f"**wall({q['one']}) / wall({q['more']}) = {q['wall_ratio']:.2f}** (batches' "
            f"span {span}, serial chain {q['serial_ratio']:.2f}, wall − serial chain {rest}). "
            "The mapped batches span "
            f"{q['batch_share_of_one']:.0%} of the {q['one']} run; cutting that span to its "
            f"longest batch, the rest unchanged, would make it {q['span_cut']:.2f}× faster. "
            f"The rest of the difference is in the gaps between tasks (scheduling, task "
            f"process start and exit: {q['gaps_one_s']:.1f} s with {q['one']}, "
            f"{q['gaps_more_s']:.1f} s with {q['more']}), and in the serial chain: the same "
            f"tasks, slower or faster with the machine's load. {slots}",
            "",
        ]
    lines.append("Model skill " + ("identical in every run (same data, params and training)."
                                   if result["same_results"] else
                                   "differs between runs: see the JSON (`skill`)."))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


_SIGNALS = {"received": [], "cleaning_up": 0}


def _interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    """SIGINT / SIGTERM: end the run, then stop every service. A signal while services are
    being stopped (or a second one) never cuts that short: it is raised once they are."""
    first = not _SIGNALS["received"]
    _SIGNALS["received"].append(signum)
    if _SIGNALS["cleaning_up"] or not first:
        log(f"signal {signum}: stopping the services first")
        return
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def cleaning_up():
    """Stopping services: signals wait (see :func:`_interrupt`) until this is done."""
    _SIGNALS["cleaning_up"] += 1
    pending = len(_SIGNALS["received"])
    try:
        yield
    finally:
        _SIGNALS["cleaning_up"] -= 1
    if not _SIGNALS["cleaning_up"] and len(_SIGNALS["received"]) > pending and pending == 0:
        raise KeyboardInterrupt(f"signal {_SIGNALS['received'][0]} while stopping services")


def reachable_by_postgres(workdir: Path) -> None:
    """PostgreSQL runs as ``postgres`` when we are root: it must enter the project."""
    if os.geteuid() == 0:
        airflow_celery._check_reachable(workdir / "project",  # noqa: SLF001
                                        airflow_celery.db_os_user())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_argument_group("the project (one of)")
    size.add_argument("--locations", type=int, help="N generated locations (with --years)")
    size.add_argument("--years", type=int, help="Y years of synthetic data (with --locations)")
    size.add_argument("--data-from", type=Path, default=None,
                      help="copy the raw data of this bench project (kept by "
                           "bench/bench_pipeline.py --keep) instead of ingesting")
    parser.add_argument("--configs", type=parse_configs, default=parse_configs("1x2,2x2"),
                        help="comma-separated WORKERSxCONCURRENCY (default 1x2,2x2)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per configuration, interleaved (default 1)")
    parser.add_argument("--batch-locations", type=int, default=None,
                        help="AQ_BATCH_LOCATIONS: locations per mapped batch (default: the "
                             "setting's default, 25)")
    parser.add_argument("--timeout", type=float, default=4 * 3600.0,
                        help="seconds for the whole script, ingest included (default 14400)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the project goes (default: a new temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    parser.add_argument("--out", action="append", default=[], type=Path,
                        help="write results: .json (raw) or .md (tables); repeatable")
    args = parser.parse_args(argv)
    if args.data_from is None and (args.locations is None or args.years is None):
        parser.error("give --locations N --years Y, or --data-from PROJECT")
    if args.data_from is not None and (args.locations is not None or args.years is not None):
        parser.error("--data-from takes the size of its project: no --locations/--years")
    for name in ("locations", "years", "repeats", "batch_locations"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for out in args.out:
        if out.suffix not in {".json", ".md"}:
            parser.error(f"--out {out}: use a .json or .md file name")
    command = "python bench/bench_celery.py " + " ".join(
        argv if argv is not None else sys.argv[1:])

    from pipeline.config import load_params
    from pipeline.io.feature_store import location_batches
    from pipeline.settings import Settings

    deadline = Deadline(args.timeout)
    # Ctrl-C and SIGTERM alike (a shell starting us in the background ignores SIGINT)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    own_workdir = args.workdir is None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_celery_"))
    workdir.mkdir(parents=True, exist_ok=True)
    if own_workdir:
        workdir.chmod(0o711)  # PostgreSQL (as `postgres` under root) must enter the project
    info = machine()
    load_start = os.getloadavg()
    # what every Airflow part and task inherits (stack/airflow_local.service_env)
    os.environ.update({
        "AQ_TASK_RETRIES": "0",  # a failed task fails the benchmark instead of a retry's delay
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only the triggered runs
        "DVC_NO_ANALYTICS": "1",
    })
    if args.batch_locations is not None:
        os.environ["AQ_BATCH_LOCATIONS"] = str(args.batch_locations)
    pushgateway = Supervisor(workdir / "pushgateway")
    runs: list[dict] = []
    try:
        reachable_by_postgres(workdir)
        root = build_project(workdir, args, deadline)
        paths = ProjectPaths(root)
        ids = load_params(paths.params).location_ids
        batch_locations = Settings.from_env().batch_locations
        expected_batches = len(location_batches(ids, batch_locations))
        n_locations, years = size_of(paths.params)
        project = {"locations": n_locations, "years": years,
                   "batch_locations": batch_locations, "batches": expected_batches,
                   "data_origin": f"copied from {args.data_from}" if args.data_from
                   else "ingested by `python -m pipeline ingest`", "path": str(root)}
        baseline = Baseline(root, workdir / "baseline")
        binary = shutil.which("prometheus-pushgateway")
        if not binary:
            raise BenchError("prometheus-pushgateway not installed: run `make setup`")
        ports = Ports(airflow=_free_port(), pushgateway=_free_port(), postgres=_free_port(),
                      redis=_free_port())
        pushgateway.start(Program("pushgateway", [
            binary, f"--web.listen-address=127.0.0.1:{ports.pushgateway}",
            "--persistence.file="]))
        pushgateway.wait_for_http(f"{ports.url('pushgateway')}/-/ready", timeout=30,
                                  name="pushgateway")
        os.environ["AQ_PUSHGATEWAY_URL"] = ports.url("pushgateway")
        for repeat in range(args.repeats):
            for config in args.configs:
                baseline.restore()
                log(f"{config.label} (run {repeat + 1} of {args.repeats})")
                result = one_run(paths, ports, config, expected_batches, deadline)
                runs.append(result)
                log(f"  {config.label}: wall {result['wall_s']:.1f}s, serial "
                    f"{result['serial_s']:.1f}s, batches {result['batch_work_s']:.1f}s of work "
                    f"in {result['batch_span_s']:.1f}s")
        baseline.restore()
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: services stopped")
        return 130
    finally:
        with cleaning_up():
            pushgateway.stop_all()
            if own_workdir and not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
            elif args.keep:
                log(f"kept {workdir}")
    summary = summarise(runs)
    result = {
        "command": command.strip(),
        "machine": info,
        "load_avg_start": [round(x, 2) for x in load_start],
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "project": project,
        "runs": runs,
        "summary": summary,
        "ratios": ratios(summary),
        "same_results": same_results(runs),
    }
    table = markdown(result)
    print(table)
    for out in args.out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n" if out.suffix == ".json" else table)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # a signal while the last services were being stopped
        log("interrupted: services stopped")
        sys.exit(130)
