"""Realised accuracy: earlier batch forecasts scored against observations that arrived since.

Scored rows are kept in predictions/realised_accuracy.parquet (an idempotent
upsert keyed by issue time, location, target and horizon), so the history grows
with every run and re-running changes nothing.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipeline.context import Context
from pipeline.core.keys import ModelKey, nest
from pipeline.core.scoring import mae, skill
from pipeline.core.validation import validate
from pipeline.io.storage import atomic_write_json, atomic_write_parquet, read_raw

log = logging.getLogger(__name__)
KEY = ["issue_time", "location_id", "target", "horizon"]


def forecasts_on_disk(ctx: Context) -> pd.DataFrame:
    files = sorted(ctx.paths.predictions_dir.glob("run=*/forecasts.parquet"))
    if not files:
        return pd.DataFrame()
    frames = [pd.read_parquet(f) for f in files]
    return pd.concat(frames, ignore_index=True).drop_duplicates(KEY, keep="last")


def match_observations(forecasts: pd.DataFrame, observed: pd.DataFrame) -> pd.DataFrame:
    long = observed.melt(id_vars=["location_id", "time"], var_name="target",
                         value_name="observed").dropna(subset=["observed"])
    merged = forecasts.merge(long, left_on=["location_id", "target_time", "target"],
                             right_on=["location_id", "time", "target"], how="inner")
    return merged[KEY + ["target_time", "value", "persistence", "observed", "model_version"]]


def summarise(history: pd.DataFrame) -> dict:
    out: dict[ModelKey, dict] = {}
    for key, part in history.groupby(["target", "horizon"]):
        model_mae = mae(part["observed"], part["value"])
        with_persistence = part.dropna(subset=["persistence"])
        p_mae = (mae(with_persistence["observed"], with_persistence["persistence"])
                 if len(with_persistence) else float("nan"))
        out[ModelKey.of(*key)] = {
            "n": int(len(part)),
            "mae": model_mae,
            "persistence_mae": p_mae,
            "skill": skill(model_mae, p_mae) if np.isfinite(p_mae) else float("nan"),
        }
    return nest(out)


def run(ctx: Context) -> dict:
    with ctx.reporter.step("score") as metrics:
        forecasts = forecasts_on_disk(ctx)
        history_path = ctx.paths.accuracy_history
        history = pd.read_parquet(history_path) if history_path.exists() else None
        scored = pd.DataFrame()
        if not forecasts.empty:
            start = forecasts["target_time"].min()
            observed = validate(
                read_raw(ctx.paths.raw_dir, ctx.params.source.kind, ctx.params.location_ids,
                         start=start),
                known_locations=ctx.params.location_ids,
            ).valid
            targets = sorted(forecasts["target"].unique())
            scored = match_observations(forecasts, observed[["location_id", "time", *targets]])
        if history is not None and not scored.empty:
            combined = pd.concat([history, scored], ignore_index=True)
            combined = combined.drop_duplicates(KEY, keep="last")
        else:
            combined = scored if history is None else history
        if not combined.empty:
            combined = combined.sort_values(KEY).reset_index(drop=True)
            atomic_write_parquet(history_path, combined)
        summary = summarise(combined) if not combined.empty else {}
        for target, by_h in summary.items():
            for horizon, s in by_h.items():
                metrics.set("aq_realised_mae", s["mae"], target=target, horizon=horizon)
                metrics.set("aq_realised_forecasts_scored", s["n"], target=target,
                            horizon=horizon)
                if np.isfinite(s["skill"]):
                    metrics.set("aq_realised_skill", s["skill"], target=target, horizon=horizon)
        metrics.rows(rows_in=len(forecasts), rows_out=len(combined))
        report = {"forecasts_on_disk": int(len(forecasts)), "scored": int(len(combined)),
                  "by_target_horizon": summary}
        atomic_write_json(ctx.paths.accuracy_report, report)
        log.info("score: %d forecasts scored of %d on disk", len(combined), len(forecasts))
    return report
