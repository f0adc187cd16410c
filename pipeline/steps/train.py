"""Fit the candidate: one estimator per target x horizon on data before the holdout."""

from __future__ import annotations

import logging

import pandas as pd
from tqdm import tqdm

from pipeline.context import Context
from pipeline.core.drift import reference_distribution
from pipeline.core.features import feature_columns, location_codes
from pipeline.core.models import Split, fit_models
from pipeline.io.registry import save_bundle
from pipeline.steps.common import data_version, require

log = logging.getLogger(__name__)


def run(ctx: Context) -> dict:
    with ctx.reporter.step("train") as metrics:
        p = ctx.params
        frame = pd.read_parquet(require(ctx.paths.features, "preprocess"))
        features = feature_columns(frame)
        split = Split.last_observed_days(frame, p.targets, p.evaluation.holdout_days)
        total = len(p.targets) * len(p.horizons)
        with tqdm(total=total, desc="train", unit="model", disable=None) as bar:
            models = fit_models(frame, features, p.targets, p.horizons, p.model, split,
                                progress=lambda *_: bar.update())
        training = frame[frame["time"] < split.holdout_start]
        metadata = save_bundle(
            ctx.paths.candidate_dir,
            models,
            {
                "targets": list(p.targets),
                "horizons": list(p.horizons),
                "features": features,
                "location_codes": location_codes(p.location_ids),
                "holdout_start": split.holdout_start.isoformat(),
                "train_rows": int(len(training)),
                "params": p.model_dump(mode="json"),
                "data_version": data_version(ctx),
                "reference": reference_distribution(training, features, p.drift.bins,
                                                    months=training["time"].dt.month),
                "reference_period": {"start": training["time"].min().isoformat(),
                                     "end": training["time"].max().isoformat()},
            },
        )
        metrics.rows(rows_in=len(frame), rows_out=total)
        log.info("train: candidate %s (%d models, %d features)", metadata["version"], total,
                 len(features))
    return metadata
