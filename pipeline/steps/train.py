"""Fit the candidate: one estimator per target x horizon on data before the holdout.

Per target x horizon the settings are chosen on a time-ordered validation window at the
end of the training period, which also calibrates the 80 % prediction interval
(``pipeline/core/selection.py``); the choices, the holdout and the features travel in the
model metadata.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import pandas as pd
from tqdm import tqdm

from pipeline.context import Context
from pipeline.core.counts import extents_json
from pipeline.core.drift import reference_distribution
from pipeline.core.features import feature_columns, location_codes
from pipeline.core.intervals import COVERAGE, LEVELS
from pipeline.core.keys import keys_of, nest
from pipeline.core.models import Split, empty_features
from pipeline.core.selection import SearchSpace, fit_horizon, validation_window
from pipeline.errors import TrainingError
from pipeline.io.feature_store import FeatureStore, time_before
from pipeline.io.registry import save_bundle
from pipeline.io.storage import read_state_json
from pipeline.io.tracking import data_extents, log_run, train_run
from pipeline.steps.common import data_version, require

log = logging.getLogger(__name__)


def holdout_split(ctx: Context, counts: pd.DataFrame) -> Split:
    """The holdout of ``evaluation`` in params.yaml (from the table's hour counts); refused
    (named) if it cannot be honoured."""
    p = ctx.params
    start = p.evaluation.holdout_start
    setting = (f"evaluation.holdout_start={start}" if start is not None
               else f"evaluation.holdout_days={p.evaluation.holdout_days}")
    try:
        return Split.from_counts(counts, p.targets, p.horizons,
                                 start=None if start is None else pd.Timestamp(start),
                                 days=None if start is not None else p.evaluation.holdout_days)
    except ValueError as exc:
        raise TrainingError(f"{setting}: {exc}") from None


def search_space(ctx: Context) -> SearchSpace:
    s = ctx.params.model.selection
    return SearchSpace(
        losses=tuple(s.losses), forms=tuple(s.forms),
        regularisation=tuple(r.model_dump(exclude_none=True) for r in s.regularisation),
        max_fits=s.max_fits, max_rows=s.max_rows, validation_days=s.validation_days,
        ensemble=s.ensemble,
    )


def usable_features(frame: pd.DataFrame, split: Split, targets: list[str]) -> tuple[list[str],
                                                                                   list[str]]:
    """Model inputs, less those with no value in the training rows (warned and recorded)."""
    features = feature_columns(frame)
    training = frame["time"] < split.label_cutoff
    for target in targets:
        if not frame.loc[training, target].notna().any():
            raise TrainingError(f"target {target!r} has no observation before "
                                f"{split.label_cutoff:%Y-%m-%d %H:%M}: does the source provide "
                                f"it? (targets in params.yaml)")
    dropped = empty_features(frame, features, training)
    if dropped:
        log.warning("train: %d feature(s) have no value in the training data and are left out "
                    "(the source does not provide them?): %s", len(dropped), ", ".join(dropped))
    return [f for f in features if f not in dropped], dropped


def training_sample(ctx: Context, store: FeatureStore, counts: pd.DataFrame,
                    split: Split) -> tuple[pd.DataFrame, dict]:
    """The rows before the label cutoff, or a seeded uniform sample of ``model.max_train_rows``
    of them, read by a dataset scan (never the whole table in memory)."""
    p = ctx.params
    rows_before = int(counts.loc[counts["time"] < split.label_cutoff, "rows"].sum())
    budget = p.model.max_train_rows
    rate = 1.0 if budget is None or rows_before <= budget else budget / rows_before
    frame = store.sample(rate, p.model.random_state, filter=time_before(split.label_cutoff))
    return frame, {"rows_before_cutoff": rows_before, "rate": round(rate, 6),
                   "rows": int(len(frame)), "seed": p.model.random_state,
                   "locations": int(frame["location_id"].nunique())}


def snapshot_version(ctx: Context) -> dict:
    """The data version the features were built from (``reports/quality.json``, written by
    preprocess under the raw store's read lock); the store as it is now if that report
    predates it."""
    if ctx.paths.quality_report.exists():
        report = read_state_json(ctx.paths.quality_report, "quality report",
                                 "run `python -m pipeline preprocess` again")
        if isinstance(report, dict) and report.get("data_version"):
            return report["data_version"]
    return data_version(ctx)


def fit_models_at_once(keys: list, workers: int, done: Callable[[], object],
                       fit: Callable[[object], object]) -> dict:
    """``fit(key)`` for every key, ``workers`` at a time, each fit on one OpenMP thread.

    scikit-learn's boosting spreads one fit over the cores poorly (short parallel regions:
    ~1.2x on two cores), while the fits of different models are independent: two threads each
    fitting one model keep both cores busy. The fits share the training frame (threads, not
    processes: no second copy of it). One OpenMP thread per fit also makes the models the same
    whatever the number of workers or of the machine's cores (a sum split over threads is added
    up in another order): ``dvc repro`` elsewhere gives the same model.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    def one(key):
        result = fit(key)
        done()
        return result

    # the fits' own catch_warnings (core.models) overlap across threads: the outer one puts
    # the process's filters back as they were once every fit has ended
    with warnings.catch_warnings(), threadpool_limits(1, user_api="openmp"):
        if min(workers, len(keys)) < 2:
            return {key: one(key) for key in keys}
        with ThreadPoolExecutor(min(workers, len(keys))) as pool:
            futures = {key: pool.submit(one, key) for key in keys}
            return {key: future.result() for key, future in futures.items()}


def run(ctx: Context) -> dict:
    with ctx.reporter.step("train") as metrics:
        p = ctx.params
        store = FeatureStore(require(ctx.paths.features, "preprocess"),
                             ctx.settings.batch_locations)
        counts = store.hour_counts(list(p.targets))
        split = holdout_split(ctx, counts)
        holdout = split.describe_counts(counts)
        log.info("train: holdout %s .. %s (%d days, %d rows); training labels before %s "
                 "(%d rows)", holdout["start"], holdout["end"], holdout["holdout_days"],
                 holdout["holdout_rows"], holdout["train_end"], holdout["train_rows"])
        frame, sample = training_sample(ctx, store, counts, split)
        if sample["rate"] < 1:
            log.info("train: fitting on a seeded uniform sample of %d of the %d rows before %s "
                     "(model.max_train_rows=%d)", sample["rows"], sample["rows_before_cutoff"],
                     holdout["train_end"], p.model.max_train_rows)
        features, dropped = usable_features(frame, split, list(p.targets))
        space = search_space(ctx)
        first = counts.loc[counts["observed"] > 0, "time"].min()
        total = len(p.targets) * len(p.horizons)
        try:
            validation_start = validation_window(split.label_cutoff, first, space.validation_days)
            with tqdm(total=total, desc="train", unit="model", disable=None) as bar:
                fits = fit_models_at_once(
                    keys_of(p.targets, p.horizons), ctx.settings.processes, bar.update,
                    lambda key: fit_horizon(
                        frame, features, key.target, key.horizon, p.model.base_settings(),
                        space, split.label_cutoff, validation_start, p.model.max_train_rows,
                        p.model.random_state))
        except ValueError as exc:
            raise TrainingError(str(exc)) from exc
        training = frame
        extents = extents_json(store.location_extents(list(p.targets), split.holdout_start,
                                                      split.label_cutoff))
        left_out = sorted(loc for loc, e in extents.items() if not e["holdout_rows"])
        if left_out:
            log.warning("train: the holdout from %s has no observation of %s (their data ends "
                        "before it): the promotion gate refuses a candidate that leaves out a "
                        "location the champion serves", holdout["start"], ", ".join(left_out))
        by_model = nest(fits)
        metadata = save_bundle(
            ctx.paths.candidate_dir,
            {key: fit.model for key, fit in fits.items()},
            {
                "targets": list(p.targets),
                "horizons": list(p.horizons),
                "features": features,
                "dropped_features": dropped,
                "location_codes": location_codes(p.location_ids),
                "holdout_start": split.holdout_start.isoformat(),
                "train_end": split.label_cutoff.isoformat(),
                "holdout": holdout,
                "train_rows": sample["rows_before_cutoff"],
                "train_sample": sample,
                "settings": {t: {h: f.settings for h, f in by_h.items()}
                             for t, by_h in by_model.items()},
                "selection": {t: {h: f.report for h, f in by_h.items()}
                              for t, by_h in by_model.items()},
                "intervals": {
                    "method": "split conformal: quantiles of log1p(observed) - "
                              "log1p(forecast) on the validation window, per location",
                    "coverage": COVERAGE,
                    "levels": list(LEVELS),
                    "by_model": {t: {h: f.calibration for h, f in by_h.items()}
                                 for t, by_h in by_model.items()},
                },
                "params": p.model_dump(mode="json"),
                # the snapshot preprocess read, and how far each location reaches in it
                "data_version": snapshot_version(ctx),
                "location_extents": extents,
                "reference": reference_distribution(training, features, p.drift.bins,
                                                    months=training["time"].dt.month),
                "reference_period": {"start": training["time"].min().isoformat(),
                                     "end": training["time"].max().isoformat()},
            },
        )
        metrics.rows(rows_in=int(counts["rows"].sum()), rows_out=total)
        log.info("train: candidate %s (%d models, %d features)", metadata["version"], total,
                 len(features))
        extents = data_extents({loc: store.stats(loc) for loc in p.location_ids})
        log_run(ctx, train_run(ctx.paths.root, metadata, ctx.paths.candidate_dir, extents,
                               metrics.started))
    return metadata
