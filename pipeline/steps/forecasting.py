"""Issuing batch forecasts with the champion: shared by ``predict`` and ``rollback`` (not a step).

The forecast rows come from ``pipeline/forecaster.py`` (the one path batch, backtest and
serving share); this module reads each batch's inputs and writes and reports the run.

A forecast is only as good as its inputs. Each location's latest feature row records its input
completeness (the share of the model's features present) and, per target, the hours since the
target was last observed; a location below ``forecast.min_input_completeness`` or above
``forecast.max_hours_since_observation`` gets no forecast this run (a warning names it and
why, ``aq_forecast_degraded{location}`` says so, and the ``ForecastWithheld`` alert once that
lasts longer than sensor outages do), so a half-empty row never becomes an AQI alert. The
feature set, targets and horizons are the champion's own (from its metadata), and what it
serves is recorded next to what ``params.yaml`` asks for.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.context import Context
from pipeline.core.intervals import exceedance_next_24h
from pipeline.errors import MissingInputError, PipelineError
from pipeline.forecaster import Champion, InputLimits, Inputs, forecast, observation_ages
from pipeline.inputs import features_from_raw, load_validated_raw, recent_window_start
from pipeline.io.feature_store import location_batches
from pipeline.io.forecast_metrics import export_forecasts
from pipeline.io.metrics import StepRun
from pipeline.io.storage import atomic_write_json, atomic_write_parquet, read_state_json
from pipeline.timeutil import now_utc

log = logging.getLogger(__name__)


def forecast_batch(ctx: Context, champion: Champion, locations: list[str]
                   ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Forecasts of ``locations`` whose inputs are honest enough, from a bounded raw window.

    Returns (forecasts, input quality per location with data, why each withheld location
    is withheld). Only these locations' recent raw rows are read: memory grows with the
    batch, not with the number of locations.
    """
    try:
        checked = load_validated_raw(ctx, start=recent_window_start(ctx, champion.spec,
                                                                    locations=locations),
                                     locations=locations)
    except MissingInputError:
        return pd.DataFrame(), pd.DataFrame(), {loc: "no stored observations" for loc in locations}
    features = features_from_raw(ctx, checked.valid, champion.location_codes, with_labels=False,
                                 spec=champion.spec)
    latest = features.sort_values("time").groupby("location_id", sort=True).tail(1)
    inputs = Inputs.from_frame(champion, latest, observation_ages(checked.valid, latest,
                                                                  champion.targets))
    # with the model's calibration: 80 % interval and AQI-category probabilities per row
    made = forecast(champion, inputs, limits=InputLimits.of(ctx.params.forecast))
    quality = made.quality()
    reasons = {location: "; ".join(why) for location, why in made.withheld.items()}
    for location in locations:
        if location not in set(quality["location_id"]):
            reasons[location] = "no stored observations"
    return (made.frame() if len(made) else pd.DataFrame()), quality, reasons


def issue_forecasts(ctx: Context, champion: Champion, metrics: StepRun) -> dict:
    """Forecast every location the champion can honestly forecast, a batch of locations at a
    time (``AQ_BATCH_LOCATIONS``); write and report them."""
    forecasts, quality, reasons = [], [], {}
    for batch in location_batches(ctx.params.location_ids, ctx.settings.batch_locations):
        made, inputs, withheld = forecast_batch(ctx, champion, batch)
        forecasts.append(made)
        quality.append(inputs)
        reasons.update(withheld)
    return publish(ctx, champion, forecasts, quality, reasons, metrics)


# --- a mapped run: batches on any worker write pending results, one task publishes them --


def pending_dir(ctx: Context) -> Path:
    return ctx.paths.predictions_dir / "pending"


def clear_pending(ctx: Context) -> None:
    """Forget the results of batches a failed earlier run left behind."""
    shutil.rmtree(pending_dir(ctx), ignore_errors=True)


def write_pending(ctx: Context, champion: Champion, locations: list[str]) -> int:
    """One batch of a mapped run: its forecasts and input quality, one file per location."""
    forecasts, quality, reasons = forecast_batch(ctx, champion, locations)
    version = champion.version
    for location in locations:
        rows = forecasts[forecasts["location_id"] == location] if len(forecasts) else forecasts
        inputs = quality[quality["location_id"] == location] if len(quality) else quality
        directory = pending_dir(ctx) / f"location={location}"
        if len(rows):
            atomic_write_parquet(directory / "forecasts.parquet", rows.reset_index(drop=True))
        if len(inputs):
            atomic_write_parquet(directory / "inputs.parquet", inputs.reset_index(drop=True))
        # written last: a location with this file has its other files
        atomic_write_json(directory / "status.json", {
            "model_version": version, "withheld": reasons.get(location),
            "forecasts": bool(len(rows)), "inputs": bool(len(inputs))})
    return len(forecasts)


class StaleBatchesError(PipelineError):
    """Locations without a batch result made with the model being published."""

    def __init__(self, locations: list[str], message: str) -> None:
        super().__init__(message)
        self.locations = locations


def publish_pending(ctx: Context, champion: Champion, metrics: StepRun) -> dict:
    """Combine every location's pending batch result into the run's forecasts."""
    version = champion.version
    forecasts, quality, reasons = [], [], {}
    missing, other = [], []
    for location in ctx.params.location_ids:
        directory = pending_dir(ctx) / f"location={location}"
        status_path = directory / "status.json"
        if not status_path.is_file():
            missing.append(location)
            continue
        status = read_state_json(status_path, "pending forecast status",
                                 "run the predict batches again")
        if status.get("model_version") != version:
            other.append(f"{location} ({status.get('model_version')})")
            continue
        if status.get("forecasts"):
            forecasts.append(pd.read_parquet(directory / "forecasts.parquet"))
        if status.get("inputs"):
            quality.append(pd.read_parquet(directory / "inputs.parquet"))
        if status.get("withheld"):
            reasons[location] = status["withheld"]
    if missing or other:
        raise StaleBatchesError(
            missing + [entry.split(" ", 1)[0] for entry in other],
            "predict --finalize: "
            + (f"no batch result for {len(missing)} location(s): {', '.join(missing[:10])}; "
               if missing else "")
            + (f"batch results made with another champion than {version}: "
               f"{', '.join(other[:10])}; " if other else "")
            + "run `python -m pipeline predict --locations ...` for them, or the whole step")
    report = publish(ctx, champion, forecasts, quality, reasons, metrics)
    clear_pending(ctx)
    return report


def publish(ctx: Context, champion: Champion, forecasts: list[pd.DataFrame],
            quality: list[pd.DataFrame], reasons: dict[str, str], metrics: StepRun) -> dict:
    """Write the run's forecasts, latest.parquet and the report; push the metrics."""
    p = ctx.params
    targets = sorted(champion.targets)
    horizons = champion.horizons
    if targets != sorted(p.targets) or horizons != sorted(p.horizons):
        log.warning("champion %s serves targets %s at horizons %s h; params.yaml asks for %s at "
                    "%s h: what differs waits for the next promoted model", champion.version,
                    targets, horizons, sorted(p.targets), sorted(p.horizons))
    quality = [q for q in quality if len(q)]
    if not quality:
        raise MissingInputError(
            f"no raw data for source {p.source.kind!r} in {ctx.paths.raw_dir}: "
            "run `python -m pipeline ingest` first")
    quality = pd.concat(quality, ignore_index=True).sort_values("location_id",
                                                                ignore_index=True)
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

    forecasts = [f for f in forecasts if len(f)]
    if not forecasts:
        raise PipelineError(
            "no location has complete enough inputs for a forecast: "
            + "; ".join(f"{loc}: {why}" for loc, why in sorted(reasons.items()))
        )
    forecasts = pd.concat(forecasts, ignore_index=True)
    order = {key: i for i, key in enumerate(champion.keys)}
    forecasts = (forecasts.assign(_model=[order[(t, h)] for t, h in zip(
        forecasts["target"], forecasts["horizon"], strict=True)])
        .sort_values(["_model", "location_id"], kind="stable")
        .drop(columns="_model").reset_index(drop=True))
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
    metrics.rows(rows_in=len(quality), rows_out=len(forecasts))
    kept = forecasts["location_id"].nunique()
    report = {
        "model_version": champion.version,
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
             kept, issue, champion.version,
             f"; withheld: {sorted(reasons)}" if reasons else "")
    return report
