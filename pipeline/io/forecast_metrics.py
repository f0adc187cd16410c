"""Forecasts and the observations they are compared with, as bounded-cardinality gauges.

The forecasts dashboard (grafana/) draws the last batch per location x target x
horizon (with its 80 % interval when the model gives one) against the newest
stored observation per location x target. However many runs there are, the
series stay locations x targets x horizons.

A family is set whole or not at all: ``pushadd`` replaces a metric family within
its group, so setting it for some locations only would drop the others' series.
Values that are not finite are never exported (a gap, not a guess).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pandas as pd

from pipeline.io.metrics import StepRun
from pipeline.io.storage import raw_files, read_partition

# columns of a forecasts frame with the 80 % interval (issue 12 adds them; NaN = none)
LOWER, UPPER = "lower", "upper"


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def export_forecasts(run: StepRun, forecasts: pd.DataFrame) -> None:
    """The batch's value (and interval bounds when present) per location, target, horizon."""
    bounds = [(column, f"aq_forecast_{column}") for column in (LOWER, UPPER)
              if column in forecasts.columns]
    for row in forecasts.itertuples(index=False):
        labels = {"location": row.location_id, "target": row.target, "horizon": int(row.horizon)}
        if _finite(row.value):
            run.set("aq_forecast_value", float(row.value), **labels)
        for column, metric in bounds:
            bound = getattr(row, column)
            if _finite(bound):
                run.set(metric, float(bound), **labels)
    for location, issued in forecasts.groupby("location_id")["issue_time"].max().items():
        run.set("aq_forecast_issue_timestamp_seconds", pd.Timestamp(issued).timestamp(),
                location=location)


def latest_observations(raw_dir, source: str, location_ids: Iterable[str],
                        targets: Sequence[str]) -> pd.DataFrame:
    """Newest non-null value of each target per location, read from its latest partition.

    Columns ``location_id``, ``target``, ``time``, ``value``; a target missing from the
    latest partition has no row (bounded read: one file per location).
    """
    rows = []
    for location in location_ids:
        files = raw_files(raw_dir, source, [location])
        if not files:
            continue
        frame = read_partition(files[-1])
        for target in targets:
            if target not in frame.columns:
                continue
            observed = frame.loc[frame[target].notna(), ["time", target]]
            if observed.empty:
                continue
            newest = observed.loc[observed["time"].idxmax()]
            rows.append({"location_id": location, "target": target,
                         "time": pd.Timestamp(newest["time"]), "value": float(newest[target])})
    return pd.DataFrame(rows, columns=["location_id", "target", "time", "value"])


def export_observations(run: StepRun, observations: pd.DataFrame) -> None:
    """The newest observation and its hour per location and target."""
    for row in observations.itertuples(index=False):
        if not _finite(row.value):
            continue
        labels = {"location": row.location_id, "target": row.target}
        run.set("aq_observation_value", row.value, **labels)
        run.set("aq_observation_timestamp_seconds", pd.Timestamp(row.time).timestamp(), **labels)
