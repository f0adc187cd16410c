"""Forecast quality on real measured data: the project's defaults against a tuned reference.

For each real data set of ``../shared/datasets`` (``bench/realdata.py``: provenance, sha256,
the pinned package it is fetched from when the folder is absent) and its fixed split
(Beijing: fit 2010-2012, settings on 2013, test 2014; Detroit/Windsor: fit up to 2023,
settings on 2024, test 2025, every site a location, targets pm2_5, no2, o3):

- **pipeline**: a project with the repo's ``params.yaml`` defaults (only the locations, the
  targets, the source and the holdout set for the data set), run as a user runs it:
  ``python -m pipeline backfill``, ``preprocess``, ``train`` (holdout = the test period) and
  ``backtest --start <test start> --end <test end>``: every origin of the test period
  forecast by the saved models. Wall time, CPU and peak RSS per step.
- **reference** (``bench/reference.py``): LightGBM, absolute error, lags and rolling
  statistics of every variable of the file, calendar; settings chosen on the validation
  period only, the test period scored once.

Both are scored on the same rows (origins whose target hour is in the test period, where the
observation, persistence and the seasonal naive forecast exist): MAE skill against
persistence and against the seasonal naive forecast per target x horizon, and the pipeline's
80 % interval coverage.

``--phase validation`` runs the pipeline on the validation period instead (data up to its
end, holdout = the validation period): where model defaults are compared while they are
being chosen, so that the test period is scored once (the reference is not run then).

``--import project`` (default) imports the original file as a user does, with the mapping in
``examples/realdata/<name>/params.yaml`` (``python -m pipeline backfill``); ``--import direct``
writes the benchmark's own canonical rows (``realdata.canonical``, the same rows) as a Parquet
file the CSV source reads with a plain column mapping.

    .venv/bin/python bench/bench_realdata.py                                # both, test
    .venv/bin/python bench/bench_realdata.py --datasets beijing --phase validation
    .venv/bin/python bench/bench_realdata.py --only reference --out bench/results/ref.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import realdata  # noqa: E402
import reference  # noqa: E402
from bench_pipeline import (  # noqa: E402
    PEAK_WRAPPER,
    TreePeak,
    child_peak_kb,
    machine,
    step_env,
)

KEYS = ["target", "horizon", "location_id", "origin"]


def period(name: str, phase: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    ds = realdata.DATASETS[name]
    start, end = ds.test if phase == "test" else ds.validation
    return pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC")


# --- the import: one function to switch ------------------------------------------------------


def import_direct(name: str, root: Path, end: pd.Timestamp) -> dict:
    """Canonical rows as a Parquet file and the ``source`` + ``locations`` settings reading it."""
    frame, locations = realdata.canonical(name)
    frame = frame[frame["time"] < end]
    (root / "imports").mkdir(exist_ok=True)
    frame.to_parquet(root / "imports" / f"{name}.parquet", index=False)
    variables = [c for c in frame.columns if c not in ("location_id", "time")
                 and not c.startswith("cov_")]
    covariates = {c[len("cov_"):]: c for c in frame.columns if c.startswith("cov_")}
    return {
        "locations": locations,
        "source": {"kind": "csv", "csv": {
            "path": f"imports/{name}.parquet",
            "mapping": {"time": "time", "location": "location_id",
                        "columns": {v: v for v in variables},
                        **({"covariates": covariates} if covariates else {})}}},
    }


def import_project(name: str, root: Path, end: pd.Timestamp) -> dict:
    """The original file with the project's mapping (``examples/realdata/<name>/params.yaml``),
    read from its folder (``AQ_CSV_DIR``)."""
    example = yaml.safe_load((REPO / "examples" / "realdata" / name / "params.yaml").read_text())
    path = realdata.path_of(name)
    source = example["source"]
    source["csv"]["path"] = str(path)  # absolute: shared folder or the fetched copy
    return {"locations": example["locations"], "source": source,
            **({"features": example["features"]} if "features" in example else {})}


IMPORTS = {"direct": import_direct, "project": import_project}


def make_project(name: str, root: Path, phase: str, how: str, overrides: dict | None = None
                 ) -> Path:
    """A project with the repo's code and default params.yaml, set up for one data set."""
    ds = realdata.DATASETS[name]
    start, end = period(name, phase)
    root.mkdir(parents=True)
    shutil.copytree(REPO / "pipeline", root / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for extra in ("dvc.yaml", ".dvcignore"):
        if (REPO / extra).exists():
            shutil.copy(REPO / extra, root / extra)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    imported = IMPORTS[how](name, root, end)
    params["locations"] = imported["locations"]
    params["targets"] = list(ds.targets)
    params["source"] = {**imported["source"], "end": end.date().isoformat()}
    params["source"].setdefault("start", ds.fit[0])
    if "features" in imported:
        params["features"] = {**params["features"], **imported["features"]}
    params["evaluation"] = {"holdout_start": start.date().isoformat()}
    params["backtest"] = {**params.get("backtest", {}), "start": start.date().isoformat(),
                          "end": end.date().isoformat()}
    for key, value in (overrides or {}).items():  # "model.selection.max_fits": 1, ...
        node = params
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False,
                                                     allow_unicode=True))
    return root


def run_step(root: Path, args: list[str], log_dir: Path) -> dict:
    """``python -m pipeline <args>`` as its own process: wall, CPU, peak RSS, load."""
    peak_file = log_dir / f"{args[0]}.peak"
    log_path = log_dir / f"{args[0]}.log"
    load_before = os.getloadavg()[0]
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", PEAK_WRAPPER, *args], cwd=root,
                                env={**step_env(root), "AQ_BENCH_PEAK_FILE": str(peak_file)},
                                stdout=log, stderr=subprocess.STDOUT)
        tree = TreePeak(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        tree_peak = tree.stop()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n"
                           + log_path.read_text(errors="replace")[-4000:])
    return {"step": args[0], "wall_s": round(wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round((child_peak_kb(peak_file) or usage.ru_maxrss) / 1024),
            "tree_peak_rss_mb": round(tree_peak / 1024),
            "load_1m_before": round(load_before, 2), "load_1m_after": round(os.getloadavg()[0], 2)}


def run_pipeline(name: str, workdir: Path, phase: str, how: str,
                 overrides: dict | None = None) -> tuple[pd.DataFrame, list[dict], dict]:
    """The project's steps on one data set; the backtest's forecasts, step costs, metadata.

    A project of an earlier run in ``workdir`` is resumed: the steps it finished are not run
    again (their recorded costs are kept)."""
    root = workdir / f"{name}-{phase}"
    log_dir = root / "bench-logs"
    done = log_dir / "steps.json"  # the steps that finished, with their costs
    if not root.exists():
        make_project(name, root, phase, how, overrides)
        log_dir.mkdir()
    steps = json.loads(done.read_text()) if done.exists() else []
    start, end = period(name, phase)
    for args in (["backfill"], ["preprocess"], ["train"],
                 ["backtest", "--start", start.isoformat(), "--end", end.isoformat()]):
        if any(s["step"] == args[0] for s in steps):
            continue
        result = run_step(root, args, log_dir)
        steps.append(result)
        done.write_text(json.dumps(steps))
        print(f"  {name} {args[0]:<10} {result['wall_s']:8.1f} s wall {result['cpu_s']:8.1f}"
              f" s cpu {result['peak_rss_mb']:6d} MB  load {result['load_1m_before']:.1f}",
              flush=True)
    predictions = pd.read_parquet(root / "reports" / "backtest" / "predictions.parquet")
    # the candidate's metadata: build/candidate/ today, models/candidate/ before
    meta_path = next((p for p in (root / "build" / "candidate" / "metadata.json",
                                  *(root / "models" / "candidate").glob("*.json"))
                      if p.exists()), None)
    meta = json.loads(meta_path.read_text()) if meta_path else {}
    return predictions, steps, {"settings": meta.get("settings"),
                                "dropped_features": meta.get("dropped_features"),
                                "project": str(root)}


# --- scoring --------------------------------------------------------------------------------


def scorable(predictions: pd.DataFrame) -> pd.DataFrame:
    keep = (predictions["observed"].notna() & predictions["persistence"].notna()
            & predictions["seasonal_naive"].notna())
    return predictions[keep]


def scores(rows: pd.DataFrame, value: str) -> pd.DataFrame:
    """Skill against persistence and the seasonal naive forecast, coverage, per target x h."""
    records = []
    for (target, horizon), part in rows.groupby(["target", "horizon"], sort=True):
        observed = part["observed"].to_numpy()
        mae = np.mean(np.abs(part[value].to_numpy() - observed))
        persistence = np.mean(np.abs(part["persistence"].to_numpy() - observed))
        seasonal = np.mean(np.abs(part["seasonal_naive"].to_numpy() - observed))
        record = {"target": target, "horizon": int(horizon), "n": len(part),
                  "mae": mae, "skill": 1 - mae / persistence,
                  "skill_vs_seasonal": 1 - mae / seasonal}
        if value == "value" and "lower" in part and part["lower"].notna().any():
            inside = (observed >= part["lower"].to_numpy()) & (observed <= part["upper"].to_numpy())
            record["coverage"] = float(inside[part["lower"].notna().to_numpy()].mean())
        records.append(record)
    return pd.DataFrame(records)


def run_reference(name: str, predictions: pd.DataFrame | None = None,
                  horizons=(1, 6, 12, 24),
                  ) -> tuple[pd.DataFrame, list[dict], dict]:
    """The tuned reference's forecasts of the test period (scored once)."""
    ds = realdata.DATASETS[name]
    frame, locations = realdata.canonical(name)
    timezones = {loc["id"]: loc["timezone"] for loc in locations}
    test_end = pd.Timestamp(ds.test[1], tz="UTC")
    frame = frame[frame["time"] < test_end]
    started, cpu = time.perf_counter(), time.process_time()
    table, inputs = reference.build(frame, ds.targets, horizons, timezones)
    bounds = {k: tuple(pd.Timestamp(x, tz="UTC") for x in getattr(ds, k))
              for k in ("fit", "validation", "test")}
    pieces, reports = [], []
    for target in ds.targets:
        for horizon in horizons:
            forecasts, report = reference.fit_predict(
                table, inputs, target, horizon, bounds["fit"], bounds["validation"],
                bounds["test"])
            pieces.append(forecasts)
            reports.append(report)
    cost = {"wall_s": round(time.perf_counter() - started, 1),
            "cpu_s": round(time.process_time() - cpu, 1), "inputs": len(inputs)}
    return pd.concat(pieces, ignore_index=True), reports, cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="beijing,detroit")
    parser.add_argument("--phase", choices=("test", "validation"), default="test")
    parser.add_argument("--import", dest="how", choices=tuple(IMPORTS), default="project")
    parser.add_argument("--only", choices=("pipeline", "reference"), default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                        help="override a params.yaml key of the pipeline run, e.g. "
                             "model.selection.max_fits=1")
    parser.add_argument("--workdir", type=Path, help="keep the projects here")
    parser.add_argument("--reference-cache", type=Path,
                        help="keep the reference's forecasts here and reuse them (the reference "
                             "does not depend on the project's code)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    info = {**machine(), "load_1m_start": round(os.getloadavg()[0], 2)}
    print(info, flush=True)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    results = {"machine": info, "phase": args.phase, "import": args.how, "overrides": overrides,
               "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "datasets": {}}
    tmp = tempfile.TemporaryDirectory(prefix="aq-bench-realdata-")
    workdir = args.workdir or Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for name in args.datasets.split(","):
            out: dict = {}
            predictions = None
            if args.only != "reference":
                predictions, steps, meta = run_pipeline(name, workdir, args.phase, args.how,
                                                        overrides)
                out["steps"], out["model"] = steps, meta
                rows = scorable(predictions)
                out["pipeline"] = scores(rows, "value").to_dict("records")
            if args.only != "pipeline" and args.phase == "test":
                cache = args.reference_cache / f"{name}.parquet" if args.reference_cache \
                    else None
                if cache is not None and cache.exists():  # made by an earlier run
                    forecasts = pd.read_parquet(cache)
                    saved = json.loads(cache.with_suffix(".json").read_text())
                    reports, cost = saved["settings"], saved["cost"]
                else:
                    forecasts, reports, cost = run_reference(name)
                    if cache is not None:
                        cache.parent.mkdir(parents=True, exist_ok=True)
                        forecasts.to_parquet(cache, index=False)
                        cache.with_suffix(".json").write_text(json.dumps(
                            {"settings": reports, "cost": cost}, default=str))
                out["reference_cost"], out["reference_settings"] = cost, reports
                if predictions is not None:  # on the pipeline's rows
                    both = rows.merge(forecasts[[*KEYS, "reference"]], on=KEYS, how="left")
                    out["reference_missing"] = int(both["reference"].isna().sum())
                    both = both.dropna(subset=["reference"])
                else:
                    both = scorable(forecasts)
                out["reference"] = scores(both, "reference").to_dict("records")
            results["datasets"][name] = out
            print(table(name, out), flush=True)
    finally:
        results["load_1m_end"] = round(os.getloadavg()[0], 2)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1, default=str))
        if args.workdir is None:
            tmp.cleanup()
    return 0


def table(name: str, out: dict) -> str:
    """Markdown: per target x horizon, the defaults' skill, the reference's, coverage."""
    pipe = {(r["target"], r["horizon"]): r for r in out.get("pipeline", [])}
    ref = {(r["target"], r["horizon"]): r for r in out.get("reference", [])}
    lines = [f"{name}:", "| target | h | defaults skill | reference skill | difference | "
             "defaults vs seasonal | coverage 80 % | n |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key in sorted(pipe or ref):
        p, r = pipe.get(key, {}), ref.get(key, {})
        diff = p["skill"] - r["skill"] if p and r else float("nan")
        lines.append(f"| {key[0]} | {key[1]} | {p.get('skill', float('nan')):.3f} | "
                     f"{r.get('skill', float('nan')):.3f} | {diff:+.3f} | "
                     f"{p.get('skill_vs_seasonal', float('nan')):.3f} | "
                     f"{p.get('coverage', float('nan')):.1%} | {p.get('n', r.get('n', 0))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
