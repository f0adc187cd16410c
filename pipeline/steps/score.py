"""Realised accuracy: earlier batch forecasts scored against observations that arrived since.

Scored rows are kept in predictions/realised_accuracy.parquet (an idempotent
upsert keyed by issue time, location, target and horizon), so the history grows
with every run and re-running changes nothing. The step works a batch of locations at a
time (``AQ_BATCH_LOCATIONS``): their forecasts, observations and history are read, scored
and written as one part of the new history file (rows by location, then issue time, target
and horizon), so memory grows with the batch, not with the number of locations.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.context import Context
from pipeline.core.keys import ModelKey, nest
from pipeline.core.scoring import ExactSum, skill
from pipeline.core.validation import validate
from pipeline.io.feature_store import location_batches
from pipeline.io.storage import ParquetParts, atomic_write_json, read_locations, read_raw

log = logging.getLogger(__name__)
KEY = ["issue_time", "location_id", "target", "horizon"]
ORDER = ["location_id", "issue_time", "target", "horizon"]  # of the history file's rows


def forecasts_on_disk(ctx: Context, locations: list[str]) -> pd.DataFrame:
    """Every forecast run's rows of ``locations``; a later run's row wins a repeated key."""
    files = sorted(ctx.paths.predictions_dir.glob("run=*/forecasts.parquet"))
    frames = [pd.read_parquet(f, filters=[("location_id", "in", locations)]) for f in files]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).drop_duplicates(KEY, keep="last")


def history_of(path: Path, locations: list[str], others: bool = False) -> pd.DataFrame | None:
    """The scored rows of ``locations`` (with ``others``: of every other location) kept by
    earlier runs, None before the first; read in bounded batches (:func:`read_locations`)."""
    return read_locations(path, locations, others) if path.exists() else None


def match_observations(forecasts: pd.DataFrame, observed: pd.DataFrame) -> pd.DataFrame:
    long = observed.melt(id_vars=["location_id", "time"], var_name="target",
                         value_name="observed").dropna(subset=["observed"])
    merged = forecasts.merge(long, left_on=["location_id", "target_time", "target"],
                             right_on=["location_id", "time", "target"], how="inner")
    return merged[KEY + ["target_time", "value", "persistence", "observed", "model_version"]]


class RealisedSums:
    """MAE of the forecasts and of persistence per target x horizon, a batch at a time
    (exact sums: the same figures whatever the batches)."""

    def __init__(self) -> None:
        self.groups: dict[ModelKey, list] = {}

    def add(self, history: pd.DataFrame) -> None:
        for (target, horizon), part in history.groupby(["target", "horizon"], sort=False):
            key = ModelKey.of(target, horizon)
            n, model, persistence, known = self.groups.setdefault(
                key, [0, ExactSum(), ExactSum(), 0])
            observed = part["observed"].to_numpy(np.float64)
            model.add(np.abs(observed - part["value"].to_numpy(np.float64)))
            baseline = part["persistence"].to_numpy(np.float64)
            has = ~np.isnan(baseline)
            persistence.add(np.abs(observed[has] - baseline[has]))
            self.groups[key] = [n + len(part), model, persistence, known + int(has.sum())]

    def summary(self) -> dict:
        out: dict[ModelKey, dict] = {}
        for key, (n, model, persistence, known) in sorted(self.groups.items()):
            model_mae = model.mean(n)
            p_mae = persistence.mean(known)
            out[key] = {
                "n": int(n),
                "mae": model_mae,
                "persistence_mae": p_mae,
                "skill": skill(model_mae, p_mae) if np.isfinite(p_mae) else float("nan"),
            }
        return nest(out)


def score_batch(ctx: Context, locations: list[str], history_path: Path
                ) -> tuple[int, pd.DataFrame]:
    """(forecasts on disk, the new history) of ``locations``."""
    forecasts = forecasts_on_disk(ctx, locations)
    history = history_of(history_path, locations)
    scored = pd.DataFrame()
    if not forecasts.empty:
        observed = validate(
            read_raw(ctx.paths.raw_dir, ctx.params.source.kind, locations,
                     start=forecasts["target_time"].min()),
            known_locations=ctx.params.location_ids,
        ).valid
        targets = sorted(forecasts["target"].unique())
        scored = match_observations(forecasts, observed[["location_id", "time", *targets]])
    if history is not None and len(history) and not scored.empty:
        combined = pd.concat([history, scored], ignore_index=True)
        combined = combined.drop_duplicates(KEY, keep="last")
    else:
        combined = scored if history is None or history.empty else history
    return len(forecasts), combined.sort_values(ORDER).reset_index(drop=True)


def run(ctx: Context) -> dict:
    with ctx.reporter.step("score") as metrics:
        history_path = ctx.paths.accuracy_history
        sums, on_disk, scored = RealisedSums(), 0, 0
        with ParquetParts(history_path) as history:
            for batch in location_batches(ctx.params.location_ids, ctx.settings.batch_locations):
                forecasts, combined = score_batch(ctx, batch, history_path)
                on_disk += forecasts
                scored += len(combined)
                history.write(combined)
                sums.add(combined)
            kept = history_of(history_path, list(ctx.params.location_ids), others=True)
            if kept is not None:  # rows of locations no longer configured stay
                scored += len(kept)
                history.write(kept.sort_values(ORDER))
                sums.add(kept)
        summary = sums.summary()
        for target, by_h in summary.items():
            for horizon, s in by_h.items():
                metrics.set("aq_realised_mae", s["mae"], target=target, horizon=horizon)
                metrics.set("aq_realised_forecasts_scored", s["n"], target=target,
                            horizon=horizon)
                if np.isfinite(s["skill"]):
                    metrics.set("aq_realised_skill", s["skill"], target=target, horizon=horizon)
        metrics.rows(rows_in=on_disk, rows_out=scored)
        report = {"forecasts_on_disk": int(on_disk), "scored": int(scored),
                  "by_target_horizon": summary}
        atomic_write_json(ctx.paths.accuracy_report, report)
        log.info("score: %d forecasts scored of %d on disk", scored, on_disk)
    return report
