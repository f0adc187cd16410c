"""Data-quality figures of one ingestion run, as plain numbers the metrics reporter pushes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from pipeline.schema import VALUE_COLUMNS


@dataclass
class IngestQuality:
    rows_per_location: dict[str, int] = field(default_factory=dict)
    null_fraction: dict[str, float] = field(default_factory=dict)
    freshness_lag_s: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "rows_per_location": self.rows_per_location,
            "null_fraction": self.null_fraction,
            "freshness_lag_s": self.freshness_lag_s,
            "failures": self.failures,
            "quarantined": self.quarantined,
            "quarantine_reasons": self.quarantine_reasons,
        }


def null_fraction(frame: pd.DataFrame) -> dict[str, float]:
    if frame.empty:
        return {col: 1.0 for col in VALUE_COLUMNS}
    return {col: float(frame[col].isna().mean()) for col in VALUE_COLUMNS}


def rows_per_location(frame: pd.DataFrame, location_ids: list[str]) -> dict[str, int]:
    counts = frame.groupby("location_id").size() if not frame.empty else pd.Series(dtype=int)
    return {loc: int(counts.get(loc, 0)) for loc in location_ids}


def freshness_lag(newest: dict[str, pd.Timestamp | None], now: pd.Timestamp) -> dict[str, float]:
    """Seconds between now and each location's newest stored observation (inf if none)."""
    return {
        loc: float("inf") if ts is None else max(0.0, (now - ts).total_seconds())
        for loc, ts in newest.items()
    }


def input_problems(completeness: float, hours_since: dict[str, float], issue_time: str,
                   min_completeness: float, max_hours: float) -> list[str]:
    """Why a forecast's inputs are too incomplete to issue it (empty: they are fine).

    One rule for batch forecasts (``pipeline/steps/forecasting.py``) and online ones
    (``serving/``): the share of the model's features present, and per target the hours since
    it was last observed at the issue time (``inf``: never, in the data looked at).
    """
    problems = []
    if completeness < min_completeness:
        problems.append(f"{completeness:.0%} of the model's features present "
                        f"(needs {min_completeness:.0%})")
    for target, age in hours_since.items():
        if age > max_hours:
            when = "never observed" if math.isinf(age) else f"last observed {age:.0f} h before"
            problems.append(f"{target} {when} the issue time {issue_time} "
                            f"(limit {max_hours:g} h)")
    return problems
