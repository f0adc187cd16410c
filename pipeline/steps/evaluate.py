"""Score the candidate and the baselines on the same time-ordered holdout rows."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipeline.context import Context
from pipeline.core.intervals import LOWER, UPPER, add_uncertainty
from pipeline.core.keys import ModelKey
from pipeline.core.models import Split, score_predictions
from pipeline.errors import PipelineError
from pipeline.io.feature_store import FeatureStore
from pipeline.io.holdout import holdout_predictions_of
from pipeline.io.metrics import StepRun
from pipeline.io.registry import load_bundle
from pipeline.io.storage import atomic_write_json, atomic_write_text
from pipeline.io.tracking import evaluate_run, log_run
from pipeline.steps.common import require

log = logging.getLogger(__name__)

MODEL_METRICS = {
    "mae": "aq_model_mae",
    "rmse": "aq_model_rmse",
    "r2": "aq_model_r2",
    "skill": "aq_model_skill",
    "persistence_mae": "aq_model_persistence_mae",
    "aqi_category_accuracy": "aq_model_aqi_category_accuracy",
    "coverage": "aq_model_interval_coverage",
}


def write_plots(ctx: Context, predictions: pd.DataFrame) -> None:
    """DVC plot data: predicted vs observed, error by horizon, error by hour of day."""
    plots = ctx.paths.plots_dir
    ordered = predictions.sort_values(["target", "horizon", "location_id", "issue_time"])
    groups = ordered.groupby(["target", "horizon"])
    step = (groups["observed"].transform("size") // 500).clip(lower=1)
    sample = ordered[groups.cumcount() % step == 0]
    atomic_write_text(
        plots / "predicted_vs_observed.csv",
        sample[["target", "horizon", "location_id", "observed", "predicted"]]
        .round(3).to_csv(index=False),
    )
    errors = predictions.assign(
        model=np.abs(predictions["predicted"] - predictions["observed"]),
        persistence=np.abs(predictions["persistence"] - predictions["observed"]),
    )
    by_horizon = errors.groupby(["target", "horizon"])[["model", "persistence"]].mean()
    atomic_write_text(plots / "error_by_horizon.csv",
                      by_horizon.reset_index().round(4).to_csv(index=False))
    hour = (errors["issue_time"] + pd.to_timedelta(errors["horizon"], unit="h")).dt.hour
    by_hour = errors.assign(hour=hour).groupby(["target", "hour"])[["model", "persistence"]].mean()
    atomic_write_text(plots / "error_by_hour.csv",
                      by_hour.reset_index().round(4).to_csv(index=False))


def add_coverage(scores: dict, predictions: pd.DataFrame, uncertainty: dict | None) -> None:
    """Share of holdout hours inside the 80 % interval (``coverage``), when the model has one."""
    if not uncertainty:
        return
    with_interval = add_uncertainty(predictions.rename(columns={"predicted": "value"}),
                                    uncertainty)
    inside = ((with_interval["observed"] >= with_interval[LOWER])
              & (with_interval["observed"] <= with_interval[UPPER]))
    has = with_interval[LOWER].notna()
    for key, part in inside[has].groupby(
            [with_interval.loc[has, "target"], with_interval.loc[has, "horizon"]]):
        key = ModelKey.of(*key)
        scores[key.target][key.hours]["coverage"] = float(part.mean())


def push_scores(metrics: StepRun, scores: dict) -> None:
    for target, by_horizon in scores.items():
        for horizon, values in by_horizon.items():
            for key, name in MODEL_METRICS.items():
                if key in values and np.isfinite(values[key]):
                    metrics.set(name, values[key], target=target, horizon=horizon)


def run(ctx: Context) -> dict:
    with ctx.reporter.step("evaluate") as metrics:
        bundle = load_bundle(require(ctx.paths.candidate_dir, "train"))
        store = FeatureStore(require(ctx.paths.features, "preprocess"),
                             ctx.settings.batch_locations)
        meta = bundle.metadata
        split = Split(pd.Timestamp(meta["holdout_start"]),
                      pd.Timestamp(meta["train_end"]) if meta.get("train_end") else None)
        predictions = holdout_predictions_of(store, bundle.models, split)
        try:
            scores = score_predictions(list(bundle.models), predictions)
        except ValueError as exc:
            raise PipelineError(f"evaluate: {exc}") from None
        add_coverage(scores, predictions, meta.get("intervals"))
        holdout = meta.get("holdout") or {"start": meta["holdout_start"]}
        report = {
            "version": meta["version"],
            "holdout_start": meta["holdout_start"],
            "holdout": holdout,
            "scores": scores,
        }
        atomic_write_json(ctx.paths.evaluation_report, report)
        atomic_write_json(ctx.paths.metrics_json, {
            "holdout": holdout,
            **{target: {hours: {k: round(v, 4) for k, v in s.items()}
                        for hours, s in by_h.items()} for target, by_h in scores.items()},
        })
        write_plots(ctx, predictions)
        push_scores(metrics, scores)
        metrics.rows(rows_in=int(predictions[["location_id", "issue_time"]]
                                 .drop_duplicates().shape[0]), rows_out=len(predictions))
        for target, by_h in scores.items():
            for h, s in by_h.items():
                log.info("evaluate %s h=%s: MAE %.3f persistence %.3f skill %.3f", target, h,
                         s["mae"], s["persistence_mae"], s["skill"])
        plots = ctx.paths.plots_dir
        log_run(ctx, evaluate_run(ctx.paths.root, report, {
            "evaluation.json": ctx.paths.evaluation_report,
            **{f"plots/{p.name}": p for p in sorted(plots.glob("*.csv"))}}, metrics.started))
    return report
