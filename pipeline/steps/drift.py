"""Feature drift: PSI of the recent window against the champion's training reference."""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.context import Context
from pipeline.core.drift import drift_report
from pipeline.core.features import FeatureSpec
from pipeline.errors import MissingInputError
from pipeline.forecaster import spec_of
from pipeline.inputs import features_from_raw, load_validated_raw, recent_window_start
from pipeline.io.feature_store import location_batches
from pipeline.io.metrics import StepRun
from pipeline.io.registry import Registry
from pipeline.io.storage import atomic_write_json

log = logging.getLogger(__name__)


def push_periods(metrics: StepRun, reference: dict | None, recent_times: pd.Series) -> None:
    """The periods compared: the champion's training rows and the recent window."""
    periods = {}
    if reference:  # recorded by train since the dashboards need it; older models lack it
        periods["training"] = (pd.Timestamp(reference["start"]), pd.Timestamp(reference["end"]))
    if not recent_times.empty:
        periods["recent"] = (recent_times.min(), recent_times.max())
    for period, (start, end) in periods.items():
        metrics.set("aq_drift_period_start_timestamp_seconds", start.timestamp(), period=period)
        metrics.set("aq_drift_period_end_timestamp_seconds", end.timestamp(), period=period)


def recent_features(ctx: Context, codes: dict[str, int], start: pd.Timestamp | None,
                    window: pd.Timedelta, spec: FeatureSpec | None = None) -> pd.DataFrame:
    """Every location's features (``spec``: the champion's own) of the ``window`` before the
    newest stored hour, built a batch of locations at a time (``AQ_BATCH_LOCATIONS``): memory
    grows with the batch and the window, not with the number of locations."""
    parts = []
    for batch in location_batches(ctx.params.location_ids, ctx.settings.batch_locations):
        try:
            valid = load_validated_raw(ctx, start=start, locations=batch).valid
        except MissingInputError:  # nothing stored for this batch; others may have data
            continue
        if valid.empty:
            continue
        features = features_from_raw(ctx, valid, codes, with_labels=False, spec=spec)
        # the batch's own window holds every row of the overall one (its newest hour is no
        # later than the overall newest)
        parts.append(features[features["time"] > features["time"].max() - window])
    if not parts:  # the same error as reading everything at once
        load_validated_raw(ctx, start=start)
        raise MissingInputError(f"no valid raw rows since {start} for drift")
    recent = pd.concat(parts, ignore_index=True)
    return recent[recent["time"] > recent["time"].max() - window].reset_index(drop=True)


def run(ctx: Context) -> dict:
    with ctx.reporter.step("drift") as metrics:
        bundle = Registry(ctx.paths).load_champion()
        spec = spec_of(bundle.metadata)  # the champion's features, whatever params.yaml says
        window = pd.Timedelta(days=ctx.params.drift.window_days)
        start = recent_window_start(ctx, spec, extra_hours=int(window.total_seconds() // 3600))
        recent = recent_features(ctx, bundle.metadata["location_codes"], start, window, spec)
        cfg = ctx.params.drift
        report = drift_report(bundle.metadata["reference"], recent, cfg.psi_threshold,
                              cfg.share_threshold)
        report["model_version"] = bundle.metadata["version"]
        atomic_write_json(ctx.paths.drift_report, report)
        for feature, value in report["psi"].items():
            if pd.notna(value):
                metrics.set("aq_drift_psi", value, feature=feature)
        metrics.set("aq_drift_share", report["share"])
        metrics.info("aq_drift_reference_info", {
            "months": ",".join(str(m) for m in report["reference_months"]) or "all",
            "seasonal": str(report["seasonal"]).lower(),
        })
        metrics.set("aq_drift_detected", 1 if report["detected"] else 0)
        push_periods(metrics, bundle.metadata.get("reference_period"), recent["time"])
        metrics.rows(rows_in=len(recent), rows_out=len(report["psi"]))
        reference = (f"training months {report['reference_months']}" if report["seasonal"]
                     else "all training data (too little of this season)")
        log_at = logging.WARNING if report["detected"] else logging.INFO
        log.log(log_at, "drift: %.0f%% of features drifted (%s); months %s against %s",
                100 * report["share"], ", ".join(report["drifted_features"][:8]) or "none",
                report["recent_months"], reference)
    return report
