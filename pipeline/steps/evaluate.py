"""Score the candidate and the baselines on the same time-ordered holdout rows."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipeline.context import Context
from pipeline.core.models import Split
from pipeline.errors import PipelineError
from pipeline.io.feature_store import FeatureStore
from pipeline.io.holdout import summarise_holdout
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


def write_plots(ctx: Context, plots: dict[str, pd.DataFrame]) -> None:
    """DVC plot data: predicted vs observed, error by horizon, error by hour of day."""
    for name, table in plots.items():
        atomic_write_text(ctx.paths.plots_dir / f"{name}.csv", table.to_csv(index=False))


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
        # a batch of locations at a time: memory does not grow with their number
        summary = summarise_holdout(store, bundle.models, split, meta.get("intervals"),
                                    plots=True)
        try:
            scores = summary.scores()
        except ValueError as exc:
            raise PipelineError(f"evaluate: {exc}") from None
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
        write_plots(ctx, summary.plots())
        push_scores(metrics, scores)
        metrics.rows(rows_in=summary.rows_in, rows_out=summary.rows_out)
        for target, by_h in scores.items():
            for h, s in by_h.items():
                log.info("evaluate %s h=%s: MAE %.3f persistence %.3f skill %.3f", target, h,
                         s["mae"], s["persistence_mae"], s["skill"])
        plots = ctx.paths.plots_dir
        log_run(ctx, evaluate_run(ctx.paths.root, report, {
            "evaluation.json": ctx.paths.evaluation_report,
            **{f"plots/{p.name}": p for p in sorted(plots.glob("*.csv"))}}, metrics.started))
    return report
