"""Model quality and backtest speed on the same rolling-origin backtest.

Quality (``--variants``): in-process, on one feature table built by the pipeline from
the repo's params.yaml (or N generated locations): the window is the last ``--days``
days; every variant is fitted on the labels before the window minus the longest
horizon (calibrated on the last 28 days of that period, never the window), then
forecasts every target hour of the window with the backtest code
(``pipeline.core.backtest``). Reports MAE skill against persistence per horizon, the
80 % interval coverage and the fit time. Variants:

- ``before``: the settings before issue 12 (squared error, log change, 150 iterations),
- ``absolute``: the same with ``loss: absolute_error``,
- ``selected``: the default per-horizon search (``model.selection``),
- ``lightgbm_l2`` / ``lightgbm_l1``: LightGBM with the same features, rows, target form
  (log change), leaves, learning rate, iterations and minimum leaf size.

Speed (``--timing``): ``python -m pipeline backtest`` as its own process in a project of
N locations, no refit and ``--refit-every``; wall time, CPU, peak RSS, load average.

    .venv/bin/python bench/bench_backtest.py --variants before,absolute,selected
    .venv/bin/python bench/bench_backtest.py --locations 50 --years 1 --timing --variants ""
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_pipeline import machine, make_bench_project, step_env  # noqa: E402

# feature sets (``--features``): which target-hour and trend columns a variant may use; every
# set keeps the features of round 1 (lags, windows, co-pollutants, weather now, calendar now)
FEATURE_GROUPS = {
    "trend": lambda c: c.endswith("_trend24"),
    "profiles": lambda c: any(k in c for k in ("_rel_daily_profile__h", "_rel_weekly_profile__h",
                                               "_diurnal_shape__h")),
    "calendar": lambda c: c.startswith("tt_"),
    "forecast": lambda c: c.startswith("fc_"),
}
FEATURE_SETS = {
    "none": (),
    "trend": ("trend",),
    "profiles": ("profiles",),
    "calendar": ("calendar",),
    "forecast": ("forecast",),
    "forecast+trend": ("forecast", "trend"),
    "forecast+profiles": ("forecast", "profiles"),
    "forecast+trend+profiles": ("forecast", "trend", "profiles"),
    "all": ("forecast", "trend", "profiles", "calendar"),
    # an upper bound, never a result: the *observed* weather of the target hour in place of
    # its forecast (perfect prognosis)
    "perfect_prognosis": ("forecast", "trend", "profiles"),
}


def feature_set(features: list[str], name: str) -> list[str]:
    groups = FEATURE_SETS[name]
    return [f for f in features
            if not any(test(f) for g, test in FEATURE_GROUPS.items() if g not in groups)]


def perfect_prognosis(frame: pd.DataFrame, horizons: list[int]) -> pd.DataFrame:
    """fc_<weather>__h<h> replaced by the observed weather at t + h (labelled upper bound)."""
    from pipeline.schema import WEATHER

    out = frame.copy()
    by_location = out.groupby("location_id", sort=False)
    for h in horizons:
        for variable in WEATHER:
            column = f"fc_{variable}__h{h}"
            if column in out:
                out[column] = by_location[variable].shift(-h)
        if f"fc_wind_u__h{h}" in out:
            speed = by_location["wind_speed_10m"].shift(-h)
            rad = np.deg2rad(by_location["wind_direction_10m"].shift(-h))
            out[f"fc_wind_u__h{h}"], out[f"fc_wind_v__h{h}"] = -speed * np.sin(rad), \
                -speed * np.cos(rad)
        if f"fc_precipitation_sum__h{h}" in out:
            out[f"fc_precipitation_sum__h{h}"] = sum(
                by_location["precipitation"].shift(-k).fillna(0.0) for k in range(1, h + 1))
        if f"fc_lead__h{h}" in out:
            out[f"fc_lead__h{h}"] = float(h)
    return out


HGB_VARIANTS = {
    "before": {"max_fits": 1, "base": {"loss": "squared_error"}},
    "absolute": {"max_fits": 1, "base": {"loss": "absolute_error"}},
    "selected": {"max_fits": None, "base": {}},
    # the default search with a cheaper mean: 2 models of at most 100 iterations
    "selected_ens2_it100": {"max_fits": None, "base": {"max_iter": 100}, "ensemble": 2},
    "selected_ens1": {"max_fits": None, "base": {}, "ensemble": 1},
}


def build_project(root: Path, n_locations: int | None, years: int) -> Path:
    import yaml

    if n_locations:
        make_bench_project(root, n_locations, years)
    else:
        import shutil

        root.mkdir(parents=True)
        shutil.copytree(REPO / "pipeline", root / "pipeline",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("dvc.yaml", "params.yaml"):
            shutil.copy(REPO / name, root / name)
    # every optional feature built, so that each feature set can pick its columns
    params = yaml.safe_load((root / "params.yaml").read_text())
    params.setdefault("features", {}).update(
        {"target_calendar": True, "profiles": True, "trend": True})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for step in ("ingest", "preprocess"):
        subprocess.run([sys.executable, "-m", "pipeline", step], cwd=root, env=step_env(root),
                       check=True, capture_output=True)
    return root


def lightgbm_model(features, target, settings, objective):
    from lightgbm import LGBMRegressor
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    from pipeline.core.features import anchor_column
    from pipeline.core.models import LogResidualRegressor

    select = ColumnTransformer([("features", "passthrough", list(features))],
                               remainder="drop", verbose_feature_names_out=False
                               ).set_output(transform="pandas")
    booster = LGBMRegressor(objective=objective, n_estimators=settings["max_iter"],
                            learning_rate=settings["learning_rate"],
                            num_leaves=settings["max_leaf_nodes"],
                            min_child_samples=settings["min_samples_leaf"],
                            reg_lambda=settings["l2_regularization"], max_bin=255,
                            random_state=settings["random_state"], n_jobs=2, verbose=-1)
    return Pipeline([("select", select),
                     ("model", LogResidualRegressor(booster, anchor=anchor_column(target)))])


def fit_lightgbm(frame, features, target, horizon, settings, objective, cutoff, vstart):
    from pipeline.core.features import columns_for_horizon, label_column
    from pipeline.core.intervals import calibrate
    from pipeline.core.models import eligible_rows

    features = columns_for_horizon(features, horizon)

    def fit(label_cutoff):
        rows = eligible_rows(frame, target, horizon, label_cutoff)
        model = lightgbm_model(features, target, settings, objective)
        return model.fit(frame.loc[rows, features], frame.loc[rows, label_column(target, horizon)])

    early = fit(vstart)
    valid = (frame["time"] >= vstart) & eligible_rows(frame, target, horizon, cutoff)
    part = frame.loc[valid]
    calibration = calibrate(part[label_column(target, horizon)], early.predict(part),
                            part["location_id"].to_numpy())
    return fit(cutoff), calibration


def quality(root: Path, variants: list[str], days: int,
            feature_sets: list[str] = ("all",)) -> list[dict]:
    from pipeline.config import load_params
    from pipeline.core.backtest import Window, forecast, refit_origins, score_tables
    from pipeline.core.features import feature_columns, location_codes
    from pipeline.core.intervals import COVERAGE
    from pipeline.core.models import Split, empty_features
    from pipeline.core.selection import SearchSpace, fit_horizon, validation_window
    from pipeline.forecaster import Champion, Inputs
    from pipeline.forecaster import forecast as forecast_rows

    params = load_params(root / "params.yaml")
    from pipeline.io.feature_store import FeatureStore

    # the whole table in memory: this benchmark compares variants on the default, small data
    frame = FeatureStore(root / "build" / "features").read()
    targets, horizons = list(params.targets), list(params.horizons)
    split = Split.for_holdout(frame, targets, horizons, days=days)
    window = Window(split.holdout_start, frame["time"].max() + pd.Timedelta(hours=1))
    all_features = feature_columns(frame)
    dropped = empty_features(frame, all_features, frame["time"] < split.label_cutoff)
    all_features = [f for f in all_features if f not in dropped]
    s = params.model.selection
    vstart = validation_window(split.label_cutoff, frame["time"].min(), s.validation_days)
    results = []
    observed_frame = frame
    for features_name, name in [(f, v) for f in feature_sets for v in variants]:
        features = feature_set(all_features, features_name)
        frame = (perfect_prognosis(observed_frame, horizons)
                 if features_name == "perfect_prognosis" else observed_frame)
        started = time.process_time()
        wall = time.perf_counter()
        models, calibrations = {}, {}
        for target in targets:
            for horizon in horizons:
                base = params.model.base_settings()
                if name.startswith("lightgbm"):
                    objective = "l1" if name.endswith("l1") else "l2"
                    model, calibration = fit_lightgbm(frame, features, target, horizon, base,
                                                      objective, split.label_cutoff, vstart)
                else:
                    variant = HGB_VARIANTS[name]
                    base.update(variant["base"])
                    space = SearchSpace(
                        losses=tuple(s.losses), forms=tuple(s.forms),
                        regularisation=tuple(r.model_dump(exclude_none=True)
                                             for r in s.regularisation),
                        max_fits=variant["max_fits"] or s.max_fits, max_rows=s.max_rows,
                        validation_days=s.validation_days,
                        ensemble=variant.get("ensemble", getattr(s, "ensemble", 1)))
                    fit = fit_horizon(frame, features, target, horizon, base, space,
                                      split.label_cutoff, vstart, params.model.max_train_rows,
                                      params.model.random_state)
                    model, calibration = fit.model, fit.calibration
                models[(target, horizon)] = model
                calibrations.setdefault(target, {})[str(horizon)] = calibration
        fit_cpu, fit_wall = time.process_time() - started, time.perf_counter() - wall
        champion = Champion.from_parts(models, {
            "version": name, "targets": targets, "horizons": horizons, "features": features,
            "params": {"features": params.features.model_dump()},
            "location_codes": location_codes(params.location_ids),
            "intervals": {"coverage": COVERAGE, "by_model": calibrations}})
        predictions = forecast(frame, window, horizons,
                               lambda part, _, model=champion: forecast_rows(
                                   model, Inputs.from_frame(model, part)).frame(),
                               refit_origins(window, horizons, None))
        table = score_tables(predictions)["horizon"]
        for record in table.to_dict("records"):
            results.append({"features": features_name, "variant": name, **record,
                            "fit_cpu_s": round(fit_cpu, 1), "fit_wall_s": round(fit_wall, 1)})
        print(f"{features_name} / {name}: "
              + " ".join(f"h{r['horizon']} {r['skill']:.3f}/{r['coverage']:.3f}"
                         for r in table.to_dict("records")),
              f"(fit {fit_wall:.0f} s wall, load {os.getloadavg()[0]:.1f})", flush=True)
    return results


def timing(root: Path, refit_days: list[float]) -> list[dict]:
    """The backtest step's own cost; the model is trained first without the per-horizon
    search (how it was chosen does not change what a backtest costs)."""
    import yaml

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["model"].setdefault("selection", {})["max_fits"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, "-m", "pipeline", "train"], cwd=root, env=step_env(root),
                   check=True, capture_output=True)
    rows = []
    log_dir = root / "bench-logs"
    log_dir.mkdir(exist_ok=True)
    for every in refit_days:
        extra = ["--refit-every", f"{every:g}"] if every else []
        result = run_step_with_args(root, ["backtest", *extra], log_dir)
        result["refit_every_days"] = every
        rows.append(result)
        print(result, flush=True)
    return rows


def run_step_with_args(root: Path, args: list[str], log_dir: Path) -> dict:
    load_before = os.getloadavg()[0]
    log_path = log_dir / ("_".join(args) + ".log")
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=root,
                                env=step_env(root), stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(log_path.read_text(errors="replace")[-3000:])
    return {"command": "python -m pipeline " + " ".join(args), "wall_s": round(wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "load_1m_before": round(load_before, 2),
            "load_1m_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, help="an existing project with build/features")
    parser.add_argument("--locations", type=int, default=0,
                        help="N generated locations (default: params.yaml's)")
    parser.add_argument("--years", type=int, default=1)
    parser.add_argument("--days", type=int, default=60, help="backtest window: the last N days")
    parser.add_argument("--variants", default="before,absolute,selected,lightgbm_l2,lightgbm_l1")
    parser.add_argument("--features", default="all",
                        help=f"feature sets, comma-separated: {', '.join(FEATURE_SETS)}")
    parser.add_argument("--timing", action="store_true",
                        help="also time `python -m pipeline backtest` (no refit, weekly refit)")
    parser.add_argument("--refit-days", default="0,7",
                        help="with --timing: the --refit-every values to time (0: no refit)")
    parser.add_argument("--out", type=Path, help="write the results as CSV")
    args = parser.parse_args(argv)
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="aq-bench-backtest-") as tmp:
        root = args.project or build_project(Path(tmp) / "project", args.locations, args.years)
        variants = [v for v in args.variants.split(",") if v]
        results = quality(root, variants, args.days,
                          [f for f in args.features.split(",") if f]) if variants else []
        if args.timing:
            results += timing(root, [float(d) for d in args.refit_days.split(",") if d])
    if args.out and results:
        pd.DataFrame(results).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
