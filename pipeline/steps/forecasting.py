"""Issuing batch forecasts with the champion: shared by ``predict`` and ``rollback`` (not a step).

A forecast is only as good as its inputs. Each location's latest feature row records its input
completeness (the share of the model's features present) and, per target, the hours since the
target was last observed; a location below ``forecast.min_input_completeness`` or above
``forecast.max_hours_since_observation`` gets no forecast this run (a warning names it and
why, ``aq_forecast_degraded{location}`` says so), so a half-empty row never becomes an AQI
alert. The feature set, targets and horizons are the champion's own (from its metadata), and
what it serves is recorded next to what ``params.yaml`` asks for.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipeline.context import Context
from pipeline.core.aqi import aqi, category
from pipeline.core.intervals import exceedance_next_24h
from pipeline.core.models import predict_latest
from pipeline.core.quality import input_problems
from pipeline.errors import PipelineError
from pipeline.io.forecast_metrics import export_forecasts
from pipeline.io.metrics import StepRun
from pipeline.io.registry import ModelBundle
from pipeline.io.storage import atomic_write_json, atomic_write_parquet
from pipeline.steps.common import (
    feature_spec_of,
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


def input_quality(latest: pd.DataFrame, valid: pd.DataFrame, features: list[str],
                  targets: list[str]) -> pd.DataFrame:
    """Per location: share of the model's features present, hours since each target's last
    observation (at or before the issue time; inf if never observed)."""
    out = pd.DataFrame({
        "location_id": latest["location_id"].to_numpy(),
        "issue_time": latest["time"].to_numpy(),
        "input_completeness": latest[features].notna().mean(axis=1).to_numpy(),
    })
    for target in targets:
        observed = valid.loc[valid[target].notna(), ["location_id", "time"]]
        last = observed.groupby("location_id")["time"].max()
        seen = out["location_id"].map(last)
        hours = (out["issue_time"] - seen).dt.total_seconds() / 3600
        out[f"hours_since_{target}"] = hours.fillna(np.inf).to_numpy()
    return out


def withheld_reasons(quality: pd.DataFrame, targets: list[str], min_completeness: float,
                     max_hours: float) -> dict[str, str]:
    reasons: dict[str, str] = {}
    for row in quality.itertuples(index=False):
        problems = input_problems(
            row.input_completeness, {t: getattr(row, f"hours_since_{t}") for t in targets},
            f"{row.issue_time:%Y-%m-%dT%H:%M}Z", min_completeness, max_hours)
        if problems:
            reasons[row.location_id] = "; ".join(problems)
    return reasons


def issue_forecasts(ctx: Context, bundle: ModelBundle, metrics: StepRun) -> dict:
    """Forecast every location the champion can honestly forecast; write and report them."""
    meta = bundle.metadata
    p = ctx.params
    targets = sorted({t for t, _ in bundle.models})
    horizons = sorted({h for _, h in bundle.models})
    if targets != sorted(p.targets) or horizons != sorted(p.horizons):
        log.warning("champion %s serves targets %s at horizons %s h; params.yaml asks for %s at "
                    "%s h: what differs waits for the next promoted model", meta["version"],
                    targets, horizons, sorted(p.targets), sorted(p.horizons))
    spec = feature_spec_of(meta)
    checked = load_validated_raw(ctx, start=recent_window_start(ctx, spec))
    features = features_from_raw(ctx, checked.valid, meta["location_codes"], with_labels=False,
                                 spec=spec)
    latest = features.sort_values("time").groupby("location_id", sort=True).tail(1)
    missing = [f for f in meta["features"] if f not in latest.columns]
    if missing:
        raise PipelineError(f"champion {meta['version']} needs features that were not built: "
                            f"{missing[:8]}")
    quality = input_quality(latest, checked.valid, meta["features"], targets)
    cfg = p.forecast
    reasons = withheld_reasons(quality, targets, cfg.min_input_completeness,
                               cfg.max_hours_since_observation)
    for location in p.location_ids:
        if location not in set(quality["location_id"]):
            reasons[location] = "no stored observations"
    for location, why in sorted(reasons.items()):
        log.warning("predict: no forecast for %s this run: %s", location, why)
    for row in quality.itertuples(index=False):
        metrics.set("aq_forecast_input_completeness", row.input_completeness,
                    location=row.location_id)
        for target in targets:
            age = getattr(row, f"hours_since_{target}")
            if np.isfinite(age):
                metrics.set("aq_forecast_hours_since_observation", age,
                            location=row.location_id, target=target)
    for location in p.location_ids:
        metrics.set("aq_forecast_degraded", 1 if location in reasons else 0, location=location)

    kept = latest[~latest["location_id"].isin(reasons)]
    if kept.empty:
        raise PipelineError(
            "no location has complete enough inputs for a forecast: "
            + "; ".join(f"{loc}: {why}" for loc, why in sorted(reasons.items()))
        )
    # with the model's calibration: 80 % interval and AQI-category probabilities per row
    forecasts = with_aqi(predict_latest(bundle.models, kept, meta.get("intervals")))
    by_location = quality.set_index("location_id")
    forecasts["input_completeness"] = forecasts["location_id"].map(
        by_location["input_completeness"]).to_numpy()
    forecasts["hours_since_observation"] = [
        by_location.at[loc, f"hours_since_{target}"]
        for loc, target in zip(forecasts["location_id"], forecasts["target"], strict=True)
    ]
    forecasts["model_version"] = meta["version"]
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
    for row in exceedance_next_24h(forecasts).itertuples():
        metrics.set("aq_forecast_exceedance_probability_24h", row.probability,
                    location=row.location_id, target=row.target, category=row.category)
    metrics.set("aq_forecast_rows", len(forecasts))
    export_forecasts(metrics, forecasts)
    metrics.rows(rows_in=len(checked.valid), rows_out=len(forecasts))
    report = {
        "model_version": meta["version"],
        "issue_time": issue.isoformat(),
        "rows": len(forecasts),
        "path": str(run_dir.relative_to(ctx.paths.root)),
        "serves": {"targets": targets, "horizons": horizons},
        "params_ask": {"targets": sorted(p.targets), "horizons": sorted(p.horizons)},
        "withheld": dict(sorted(reasons.items())),
        "input_completeness": {r.location_id: round(float(r.input_completeness), 4)
                               for r in quality.itertuples(index=False)},
        "max_aqi_24h": {f"{loc}/{t}": float(v) for (loc, t), v in max_aqi.items()
                        if pd.notna(v)},
    }
    atomic_write_json(ctx.paths.forecast_report, report)
    log.info("predict: %d forecasts for %d location(s) issued at %s with %s%s", len(forecasts),
             kept["location_id"].nunique(), issue, meta["version"],
             f"; withheld: {sorted(reasons)}" if reasons else "")
    return report
