"""Model-default experiments on the real data sets, in-process, on the **validation period**.

Each variant is the project's own training (``pipeline.core.selection.fit_horizon``: settings
chosen per target x horizon on the internal validation window, interval calibration, refit)
and backtest (``pipeline.core.backtest.forecast``) on the project's features
(``pipeline.core.features.build_features``), with one thing changed. The data end at the end of
the validation period (2013 for Beijing, 2024 for Detroit/Windsor); the models learn from the
labels before it and forecast every origin whose target hour lies in it. The test period is
not read: it is scored once, by ``bench_realdata.py``.

    .venv/bin/python bench/realdata_experiments.py --variants default,absolute --datasets beijing
    .venv/bin/python bench/realdata_experiments.py --variants default --since 2021-01-01

Every run appends its results (variant, data set, target, horizon, skill, coverage, fit time,
load) to ``bench/results/realdata_experiments.csv``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import realdata  # noqa: E402

from pipeline.config import FeatureConfig, ModelConfig  # noqa: E402
from pipeline.core.backtest import Window, forecast, refit_origins  # noqa: E402
from pipeline.core.features import (  # noqa: E402
    FeatureSettings,
    FeatureSpec,
    build_features,
    feature_columns,
    location_codes,
    volatility_column,
)
from pipeline.core.intervals import COVERAGE  # noqa: E402
from pipeline.core.models import empty_features  # noqa: E402
from pipeline.core.selection import SearchSpace, fit_horizon, validation_window  # noqa: E402
from pipeline.core.validation import validate  # noqa: E402

RESULTS = REPO / "bench" / "results" / "realdata_experiments.csv"
# the forecasts of every run (window and calibration window), for interval studies
SAVE = Path(os.environ["AQ_REALDATA_SAVE"]) if os.environ.get("AQ_REALDATA_SAVE") else None
HORIZONS = (1, 6, 12, 24)


def default_space() -> SearchSpace:
    s = ModelConfig().selection
    return SearchSpace(losses=tuple(s.losses), forms=tuple(s.forms),
                       regularisation=tuple(r.model_dump(exclude_none=True)
                                            for r in s.regularisation),
                       max_fits=s.max_fits, max_rows=s.max_rows,
                       validation_days=s.validation_days, ensemble=s.ensemble)


@dataclasses.dataclass
class Variant:
    """One thing changed against the defaults (``params.yaml`` as the code ships it)."""

    features: dict = dataclasses.field(default_factory=dict)  # FeatureSettings overrides
    base: dict = dataclasses.field(default_factory=dict)  # base settings overrides
    space: dict = dataclasses.field(default_factory=dict)  # SearchSpace overrides
    drop: Callable[[str], bool] | None = None  # leave these feature columns out
    max_train_rows: int | None = 400_000


VARIANTS: dict[str, Variant] = {
    "default": Variant(),
    "nosearch": Variant(space={"max_fits": 1}),
    "absolute": Variant(base={"loss": "absolute_error"}),
    "anomalies": Variant(features={"anomalies": True}),
    "ensemble3": Variant(space={"ensemble": 3}),
    "weatherlags": Variant(features={"weather_lags": (1, 3, 6, 24)}),
    "val365": Variant(space={"validation_days": 365}),
    "ens3_val365": Variant(space={"ensemble": 3, "validation_days": 365}),
    "ens3_anom": Variant(features={"anomalies": True}, space={"ensemble": 3}),
    "ev_anom": Variant(features={"anomalies": True},
                       space={"ensemble": 3, "validation_days": 365}),
    # from here on relative to the new defaults (ensemble 3, validation 365, weather lags)
    "tcal": Variant(features={"target_calendar": True}),
    "ens2_it100": Variant(base={"max_iter": 100}, space={"ensemble": 2}),
    "ens1": Variant(space={"ensemble": 1}),
    "wlags_more": Variant(features={"weather_lags": (1, 2, 3, 6, 12, 24)}),
    "ev_lr05": Variant(base={"learning_rate": 0.05, "max_iter": 300},
                       space={"ensemble": 3, "validation_days": 365}),
    "ev_wlags": Variant(features={"weather_lags": (1, 3, 6, 24)},
                        space={"ensemble": 3, "validation_days": 365}),
    "absonly": Variant(base={"loss": "absolute_error"}, space={"losses": ("absolute_error",)}),
    "lr05": Variant(base={"learning_rate": 0.05, "max_iter": 300}),
    "longval_abs": Variant(base={"loss": "absolute_error"}, space={"validation_days": 91}),
    "longval": Variant(space={"validation_days": 91}),
    "strongreg": Variant(space={"max_fits": 7, "regularisation": (
        {"max_leaf_nodes": 15, "min_samples_leaf": 200, "l2_regularization": 1.0},
        {"max_leaf_nodes": 7, "min_samples_leaf": 800, "l2_regularization": 10.0},
        {"max_leaf_nodes": 7, "min_samples_leaf": 3000, "l2_regularization": 100.0,
         "learning_rate": 0.05})}),
}


@dataclasses.dataclass
class Data:
    name: str
    frame: pd.DataFrame  # validated canonical rows
    locations: list[dict]
    window: Window
    targets: tuple[str, ...]


def load(name: str, phase: str, since: str | None) -> Data:
    ds = realdata.DATASETS[name]
    start, end = ds.validation if phase == "validation" else ds.test
    frame, locations = realdata.canonical(name)
    window = Window(pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC"))
    keep = frame["time"] < window.end
    if since:
        keep &= frame["time"] >= pd.Timestamp(since, tz="UTC")
    result = validate(frame[keep].reset_index(drop=True),
                      known_locations=[loc["id"] for loc in locations])
    return Data(name, result.valid, locations, window, ds.targets)


_FEATURE_CACHE: dict = {}


def features_for(data: Data, settings: FeatureSettings) -> pd.DataFrame:
    key = (data.name, id(data.frame), settings)
    if key not in _FEATURE_CACHE:
        _FEATURE_CACHE.clear()
        spec = FeatureSpec(data.targets, HORIZONS, settings)
        timezones = {loc["id"]: loc["timezone"] for loc in data.locations}
        codes = location_codes([loc["id"] for loc in data.locations])
        _FEATURE_CACHE[key] = build_features(data.frame, spec, timezones, codes)
    return _FEATURE_CACHE[key]


def run_variant(data: Data, name: str, variant: Variant) -> list[dict]:
    # the defaults of params.yaml's features (pipeline/config.py), the file's covariates
    base_features = dataclasses.replace(FeatureSettings.of(FeatureConfig()), covariates=tuple(
        c[len("cov_"):] for c in data.frame.columns if c.startswith("cov_")))
    settings = dataclasses.replace(base_features, **variant.features)
    started_build = time.perf_counter()
    frame = features_for(data, settings)
    build_s = time.perf_counter() - started_build
    cutoff = data.window.start - pd.Timedelta(hours=max(HORIZONS))
    features = feature_columns(frame)
    features = [f for f in features if f not in set(
        empty_features(frame, features, frame["time"] < cutoff))]
    if variant.drop is not None:
        features = [f for f in features if not variant.drop(f)]
    space = dataclasses.replace(default_space(), **variant.space)
    base = {**ModelConfig().base_settings(), **variant.base}
    first = frame.loc[frame[list(data.targets)].notna().any(axis=1), "time"].min()
    vstart = validation_window(cutoff, first, space.validation_days)
    started, cpu = time.perf_counter(), time.process_time()
    models, calibrations, chosen, validation = {}, {}, {}, []
    for target in data.targets:
        for horizon in HORIZONS:
            fit = fit_horizon(frame, features, target, horizon, base, space, cutoff, vstart,
                              variant.max_train_rows, 0)
            models[(target, horizon)] = fit.model
            calibrations.setdefault(target, {})[str(horizon)] = fit.calibration
            chosen[(target, horizon)] = fit.settings
            if fit.validation is not None:
                validation.append(fit.validation.assign(target=target, horizon=horizon))
    fit_wall, fit_cpu = time.perf_counter() - started, time.process_time() - cpu
    predictions = forecast(frame, data.window, data.targets, HORIZONS,
                           lambda t, h, _: models[(t, h)],
                           refit_origins(data.window, HORIZONS, None),
                           {"coverage": COVERAGE, "by_model": calibrations})
    keep = (predictions["observed"].notna() & predictions["persistence"].notna()
            & predictions["seasonal_naive"].notna())
    if SAVE is not None:  # for interval studies without refitting
        SAVE.mkdir(parents=True, exist_ok=True)
        stem = f"{data.name}-{name}-{data.window.start:%Y}"
        predictions.to_parquet(SAVE / f"{stem}-window.parquet", index=False)
        vol = [volatility_column(t) for t in data.targets]
        frame.loc[frame["time"] >= data.window.start - pd.Timedelta(days=1),
                  ["location_id", "time", *[v for v in vol if v in frame]]].to_parquet(
            SAVE / f"{stem}-volatility.parquet", index=False)
        if validation:
            pd.concat(validation, ignore_index=True).to_parquet(
                SAVE / f"{stem}-calibration.parquet", index=False)
    rows = []
    for (target, horizon), part in predictions[keep].groupby(["target", "horizon"]):
        observed = part["observed"].to_numpy()
        mae = np.mean(np.abs(part["value"].to_numpy() - observed))
        persistence = np.mean(np.abs(part["persistence"].to_numpy() - observed))
        seasonal = np.mean(np.abs(part["seasonal_naive"].to_numpy() - observed))
        inside = (observed >= part["lower"].to_numpy()) & (observed <= part["upper"].to_numpy())
        c = chosen[(target, horizon)]
        rows.append({"variant": name, "dataset": data.name, "target": target,
                     "horizon": int(horizon), "n": len(part),
                     "skill": round(1 - mae / persistence, 4),
                     "skill_vs_seasonal": round(1 - mae / seasonal, 4),
                     "coverage": round(float(inside.mean()), 4),
                     "chosen": f"{c.get('loss')}/{c.get('form')}/{c.get('max_leaf_nodes')}/"
                               f"{c.get('min_samples_leaf')}/{c.get('max_iter')}",
                     "features": len(features), "fit_wall_s": round(fit_wall, 1),
                     "fit_cpu_s": round(fit_cpu, 1), "build_s": round(build_s, 1),
                     "load": round(os.getloadavg()[0], 1)})
    return rows


def log_table(path: Path = RESULTS) -> str:
    """The experiment log as a markdown table: one row per run (variant, data set, sample)."""
    table = pd.read_csv(path)
    lines = ["| variant | data set (sample) | " + " | ".join(
        f"{t} {h} h" for t, h in table[["target", "horizon"]].drop_duplicates()
        .sort_values(["target", "horizon"]).itertuples(index=False)) + " | median | coverage |",
    ]
    keys = table[["target", "horizon"]].drop_duplicates().sort_values(["target", "horizon"])
    lines.append("|---|---|" + "---:|" * (len(keys) + 2))
    for (variant, dataset, since, _when), run in table.groupby(
            ["variant", "dataset", "since", "time"], sort=False, dropna=False):
        skill = {(r.target, r.horizon): r.skill for r in run.itertuples()}
        cells = [f"{skill[k]:.3f}" if k in skill else "" for k in
                 keys.itertuples(index=False, name=None)]
        sample = f" (from {since})" if isinstance(since, str) and since else ""
        lines.append(f"| {variant} | {dataset}{sample} | " + " | ".join(cells)
                     + f" | {run['skill'].median():.3f} | "
                     + "/".join(f"{c:.0%}" for c in run["coverage"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="default")
    parser.add_argument("--datasets", default="beijing,detroit")
    parser.add_argument("--phase", choices=("validation", "test"), default="validation")
    parser.add_argument("--since", help="leave out data before this date (exploration)")
    parser.add_argument("--tag", default="", help="a note stored with the results")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--log", action="store_true", help="print the experiment log (markdown)")
    args = parser.parse_args(argv)
    if args.log:
        print(log_table())
        return 0
    for dataset in args.datasets.split(","):
        data = load(dataset, args.phase, args.since)
        for name in args.variants.split(","):
            rows = run_variant(data, name, VARIANTS[name])
            table = pd.DataFrame(rows)
            table["phase"], table["since"], table["tag"] = args.phase, args.since or "", args.tag
            table["time"] = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M")
            print(f"{dataset} {name}: " + "  ".join(
                f"{r.target} h{r.horizon} {r.skill:.3f}/{r.coverage:.3f}"
                for r in table.itertuples()) + f"  median {table['skill'].median():.3f} "
                f"(fit {rows[0]['fit_wall_s']} s, load {rows[0]['load']})", flush=True)
            if not args.no_save:
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                table.to_csv(RESULTS, mode="a", header=not RESULTS.exists(), index=False)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
