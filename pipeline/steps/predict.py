"""Batch forecasts with the champion from each location's latest data."""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.context import Context
from pipeline.core.aqi import aqi, category
from pipeline.core.models import predict_latest
from pipeline.io.registry import Registry
from pipeline.io.storage import atomic_write_json, atomic_write_parquet
from pipeline.steps.common import (
    feature_spec,
    features_from_raw,
    load_validated_raw,
    recent_window_start,
)
from pipeline.timeutil import now_utc

log = logging.getLogger(__name__)


def with_aqi(forecasts: pd.DataFrame) -> pd.DataFrame:
    out = forecasts.copy()
    out["aqi"] = float("nan")
    out["aqi_category"] = "unknown"
    for target, idx in out.groupby("target").groups.items():
        values = out.loc[idx, "value"].to_numpy()
        out.loc[idx, "aqi"] = aqi(target, values)
        out.loc[idx, "aqi_category"] = category(target, values).to_numpy()
    return out


def run(ctx: Context) -> dict:
    with ctx.reporter.step("predict") as metrics:
        bundle = Registry(ctx.paths).load_champion()
        spec = feature_spec(ctx)
        checked = load_validated_raw(ctx, start=recent_window_start(ctx, spec))
        features = features_from_raw(ctx, checked.valid, bundle.metadata["location_codes"],
                                     with_labels=False)
        latest = features.sort_values("time").groupby("location_id", sort=True).tail(1)
        missing = [f for f in bundle.metadata["features"] if f not in latest.columns]
        if missing:
            raise ValueError(f"champion needs features not built from params.yaml: {missing}")
        forecasts = with_aqi(predict_latest(bundle.models, latest))
        forecasts["model_version"] = bundle.metadata["version"]
        forecasts["created_at"] = now_utc()
        issue = forecasts["issue_time"].max()
        run_dir = ctx.paths.predictions_dir / f"run={issue:%Y-%m-%dT%H%MZ}"
        atomic_write_parquet(run_dir / "forecasts.parquet", forecasts)
        atomic_write_parquet(ctx.paths.latest_predictions, forecasts)
        next_day = forecasts[forecasts["horizon"] <= 24]
        max_aqi = next_day.groupby(["location_id", "target"])["aqi"].max()
        for (location, target), value in max_aqi.items():
            if pd.notna(value):
                metrics.set("aq_forecast_max_aqi_24h", value, location=location, target=target)
        metrics.set("aq_forecast_rows", len(forecasts))
        metrics.rows(rows_in=len(checked.valid), rows_out=len(forecasts))
        report = {
            "model_version": bundle.metadata["version"],
            "issue_time": issue.isoformat(),
            "rows": len(forecasts),
            "path": str(run_dir.relative_to(ctx.paths.root)),
            "max_aqi_24h": {f"{loc}/{t}": float(v) for (loc, t), v in max_aqi.items()
                            if pd.notna(v)},
        }
        atomic_write_json(ctx.paths.forecast_report, report)
        log.info("predict: %d forecasts issued at %s with %s", len(forecasts), issue,
                 bundle.metadata["version"])
    return report
