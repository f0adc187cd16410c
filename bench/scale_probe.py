"""Scaling-law probe: the same steps at two numbers of locations over a short window.

Decides, cheaply, how the parts the 5,000-place projection (``bench/project_scale.py``)
cannot read from the 50 x 2 and 500 x 2 runs grow with the number of locations: it builds
two ``bench_pipeline.py`` projects (N1 and N2 generated places, the last M months of the
default window), runs ``ingest`` and ``preprocess`` in them exactly as the benchmark does
(own process, ``os.wait4`` CPU), then measures in this process

- train's scans of the feature table (``FeatureStore.hour_counts``, the seeded ``sample``
  at the rate 5,000 x 2 years would use, ``location_extents``, every location's stats):
  the part of train that reads every row, whatever ``model.max_train_rows`` is;
- DVC's serial work: ``dvc add data`` (what ``aq_ingest``'s ``data_version`` runs in the
  one-slot pool), ``dvc push`` of it to a local remote, and ``dvc add`` of the feature
  partitions (the hashing and cache copy of ``dvc commit preprocess``), in a scratch repo;
- bytes per raw row and per feature row (the Parquet files as stored), and files per
  location and month (the unit DVC and the worker mirror pay per).

    nice -n 19 .venv/bin/python bench/scale_probe.py --locations 50,200 --months 2 \\
        --out bench/results/scale_probe.json

``AQ_PROCESSES`` is 1 unless set: one process per step, so CPU seconds add up plainly.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_pipeline, run as a script
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the checkout's pipeline/

from bench_pipeline import machine, make_bench_project, run_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WINDOW_END = "2026-01-01"


def dir_count(root: Path) -> int:
    """Directories under ``root`` (a mirror lists each with one request)."""
    return sum(1 for path in root.rglob("*") if path.is_dir())


def dir_bytes(root: Path) -> tuple[int, int]:
    """(bytes, files) of the regular files under ``root``."""
    total = files = 0
    for path in root.rglob("*"):
        if path.is_file():
            total += path.stat().st_size
            files += 1
    return total, files


def cpu_of(fn) -> tuple[float, float]:
    """(wall s, CPU s of this process, every thread) of ``fn()``."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return round(time.perf_counter() - started, 3), round(cpu, 3)


def command(cmd: list[str], cwd: Path) -> dict:
    """One command as its own process: wall and CPU (``os.wait4``)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-2000:]}")
    return {"wall_s": round(time.perf_counter() - started, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}


def train_scans(root: Path, rate: float) -> dict:
    """The reads train makes of every feature row, timed one by one."""
    from pipeline.io.feature_store import FeatureStore

    store = FeatureStore(root / "build" / "features")
    params = yaml.safe_load((root / "params.yaml").read_text())
    targets = list(params["targets"])
    out = {}
    counts = None

    def hour_counts():
        nonlocal counts
        counts = store.hour_counts(targets)

    out["hour_counts"] = cpu_of(hour_counts)
    cutoff = counts["time"].max()
    out["sample"] = cpu_of(lambda: store.sample(rate, 0))
    out["location_extents"] = cpu_of(
        lambda: store.location_extents(targets, cutoff, cutoff))
    out["stats"] = cpu_of(lambda: [store.stats(loc) for loc in store.locations()])
    out["total_cpu_s"] = round(sum(v[1] for v in out.values()), 3)
    return {k: (v if k == "total_cpu_s" else {"wall_s": v[0], "cpu_s": v[1]})
            for k, v in out.items()}


def dvc_costs(root: Path, scratch: Path) -> dict:
    """``dvc add data`` and ``dvc push`` of it, and ``dvc add`` of the feature partitions
    (what ``dvc commit preprocess`` hashes and copies into the cache), in a scratch repo
    holding copies of data/ and build/features/."""
    repo = scratch / "repo"
    shutil.copytree(root / "data", repo / "data")
    shutil.copytree(root / "build" / "features", repo / "features")
    remote = scratch / "remote"
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=repo, check=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    subprocess.run([dvc, "remote", "add", "-d", "local", str(remote)], cwd=repo, check=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"}, stdout=subprocess.DEVNULL)
    out = {"add": command([dvc, "add", "-q", "data"], repo),
           "push": command([dvc, "push", "-q"], repo),
           "add_features": command([dvc, "add", "-q", "features"], repo)}
    out["remote_bytes"], out["remote_files"] = dir_bytes(remote)
    return out


def probe(n_locations: int, months: int, workdir: Path, rate: float) -> dict:
    label = f"{n_locations}x{months}m"
    root = make_bench_project(workdir / f"project_{label}", n_locations, 1)
    params = yaml.safe_load((root / "params.yaml").read_text())
    year, month = 2026, 1 - months
    while month < 1:
        year, month = year - 1, month + 12
    params["source"]["start"] = f"{year:04d}-{month:02d}-01"
    params["source"]["end"] = WINDOW_END
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    logs = workdir / f"logs_{label}"
    logs.mkdir()
    steps = {step: run_step(root, step, logs, None) for step in ("ingest", "preprocess")}
    for step, r in steps.items():
        print(f"  {label} {step:<10} {r['wall_s']:7.2f} s wall {r['cpu_s']:7.2f} s cpu "
              f"{r['peak_rss_mb']:7.1f} MB", file=sys.stderr, flush=True)
    quality = json.loads((root / "reports" / "quality.json").read_text())
    raw_obs, raw_obs_files = dir_bytes(root / "data" / "raw" / "source=synthetic")
    raw_fc, raw_fc_files = dir_bytes(root / "data" / "raw" / "forecasts")
    data_bytes, data_files = dir_bytes(root / "data")
    feat, feat_files = dir_bytes(root / "build" / "features")
    scans = train_scans(root, rate)
    print(f"  {label} train scans {scans['total_cpu_s']:.2f} s cpu", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        dvc = dvc_costs(root, Path(scratch))
    print(f"  {label} dvc add {dvc['add']['cpu_s']:.2f} s cpu, push {dvc['push']['cpu_s']:.2f}, "
          f"add features {dvc['add_features']['cpu_s']:.2f}",
          file=sys.stderr, flush=True)
    rows = int(quality["rows_valid"])
    feature_rows = int(quality["feature_rows"])
    return {
        "size": label, "locations": n_locations, "months": months,
        "source": params["source"]["start"] + " .. " + WINDOW_END,
        "rows_raw": rows, "feature_rows": feature_rows,
        "steps": steps, "train_scans": scans, "dvc": dvc,
        "bytes": {"raw_observations": raw_obs, "raw_observation_files": raw_obs_files,
                  "raw_forecasts": raw_fc, "raw_forecast_files": raw_fc_files,
                  "data": data_bytes, "data_files": data_files,
                  "features": feat, "feature_files": feat_files,
                  "shared_dirs": sum(dir_count(root / top) for top in ("data", "build", "models",
                                                                       "predictions", "reports")
                                     if (root / top).is_dir()),
                  "per_raw_row": round(data_bytes / rows, 1),
                  "features_per_row": round(feat / feature_rows, 1)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--locations", default="50,200", help="comma-separated, e.g. 50,200")
    parser.add_argument("--months", type=int, default=2)
    parser.add_argument("--rate", type=float, default=400_000 / 83_000_000,
                        help="sample rate for train's scan (default: 400,000 of ~83 M rows)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("AQ_PROCESSES", "1")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="aq-scale-probe-"))
    workdir.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    try:
        results = [probe(int(n), args.months, workdir, args.rate)
                   for n in args.locations.split(",")]
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"command": " ".join(["bench/scale_probe.py", *(argv or sys.argv[1:])]),
              "machine": machine(), "aq_processes": os.environ["AQ_PROCESSES"],
              "load_avg_start": [round(x, 2) for x in load_start],
              "load_avg_end": [round(x, 2) for x in os.getloadavg()], "results": results}
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
