"""Validate raw data (quarantining bad rows with reasons) and build the feature table."""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.context import Context
from pipeline.io.storage import atomic_write_json, atomic_write_parquet
from pipeline.steps.common import features_from_raw, load_validated_raw

log = logging.getLogger(__name__)


def run(ctx: Context) -> dict:
    with ctx.reporter.step("preprocess") as metrics:
        checked = load_validated_raw(ctx)
        if ctx.params.history_days:
            # history_days counts back from the newest stored data, not from today
            newest = checked.valid["time"].max()
            keep = checked.valid["time"] > newest - pd.Timedelta(days=ctx.params.history_days)
            checked.valid = checked.valid[keep].reset_index(drop=True)
        features = features_from_raw(ctx, checked.valid)
        atomic_write_parquet(ctx.paths.features, features)
        atomic_write_parquet(ctx.paths.quarantine, checked.quarantine)
        grid_rows = len(features)
        per_location = checked.valid.groupby("location_id").size().to_dict()
        report = {
            "rows_in": checked.rows_in,
            "rows_valid": len(checked.valid),
            "rows_quarantined": len(checked.quarantine),
            "duplicates_collapsed": checked.duplicates_collapsed,
            "quarantine_reasons": checked.reasons,
            "missing_hours": int(grid_rows - len(checked.valid)),
            "rows_per_location": {k: int(v) for k, v in per_location.items()},
            "time_min": str(checked.valid["time"].min()),
            "time_max": str(checked.valid["time"].max()),
            "feature_rows": grid_rows,
        }
        atomic_write_json(ctx.paths.quality_report, report)
        metrics.rows(rows_in=checked.rows_in, rows_out=grid_rows,
                      quarantined=len(checked.quarantine))
        log.info("preprocess: %d valid rows, %d quarantined, %d feature rows",
                 len(checked.valid), len(checked.quarantine), grid_rows)
    return report
