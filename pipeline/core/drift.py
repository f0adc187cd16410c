"""Population Stability Index of features: recent window vs the training reference.

Seasonally fair: the reference keeps its bin counts per calendar month, and a recent window
is compared with the training months of the same season (its months and their neighbours),
so December is not "drift" against a January-October training period. Only when training
has too little data of that season is the whole reference used (the report says so).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

EPS = 1e-4
# Calendar features and the location code move with the clock, not with the data.
NOT_MONITORED = ("hour_", "dow_", "doy_", "is_weekend", "location_code")


def monitored(features: Sequence[str]) -> list[str]:
    return [f for f in features if not f.startswith(NOT_MONITORED)]


SEASON_NEIGHBOURS = 1  # a month's season: itself and one month either side
MIN_SEASON_SHARE = 0.05  # a season with less of the training data falls back to all of it


def reference_distribution(frame: pd.DataFrame, features: Sequence[str], bins: int,
                           months: Sequence[int] | np.ndarray | None = None) -> dict:
    """Quantile bin edges and proportions of each feature, stored with the model.

    With ``months`` (the calendar month of each row), the bin counts per month are kept too,
    for the seasonal comparison.
    """
    reference = {}
    month_of_row = None if months is None else np.asarray(months, dtype=int)
    for name in monitored(features):
        values = frame[name].to_numpy(dtype=float)
        finite = np.isfinite(values)
        if not finite.any():
            continue
        edges = np.unique(np.quantile(values[finite], np.linspace(0, 1, bins + 1)[1:-1]))
        slots = np.searchsorted(edges, values[finite], side="right")
        counts = np.bincount(slots, minlength=len(edges) + 1)
        entry = {"edges": edges.tolist(), "proportions": (counts / counts.sum()).tolist()}
        if month_of_row is not None:
            row_months = month_of_row[finite]
            entry["monthly_counts"] = {
                str(m): np.bincount(slots[row_months == m], minlength=len(edges) + 1).tolist()
                for m in np.unique(row_months)
            }
        reference[name] = entry
    return reference


def season_of(months: Sequence[int]) -> set[int]:
    """The calendar months whose data is comparable with data of ``months``."""
    return {(m - 1 + d) % 12 + 1 for m in months
            for d in range(-SEASON_NEIGHBOURS, SEASON_NEIGHBOURS + 1)}


def seasonal_expected(reference: dict, months: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """Expected bin proportions for data of ``months``: the same season's training months if
    they hold enough of the training data, else the whole reference (months = [])."""
    monthly = reference.get("monthly_counts")
    if monthly and months:
        wanted = season_of(months)
        used = sorted(int(m) for m in monthly if int(m) in wanted)
        total = sum(sum(c) for c in monthly.values())
        counts = np.sum([monthly[str(m)] for m in used], axis=0) if used else None
        if counts is not None and total and counts.sum() >= MIN_SEASON_SHARE * total:
            return counts / counts.sum(), used
    return np.asarray(reference["proportions"], dtype=float), []


def psi(reference: dict, values: np.ndarray, expected: np.ndarray | None = None) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    edges = np.asarray(reference["edges"])
    expected = np.asarray(reference["proportions"] if expected is None else expected)
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    actual = counts / counts.sum()
    expected = np.clip(expected, EPS, None)
    actual = np.clip(actual, EPS, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift_report(reference: dict, recent: pd.DataFrame, psi_threshold: float,
                 share_threshold: float) -> dict:
    """PSI per feature of ``recent`` against the same season of the reference (when ``recent``
    has a ``time`` column and the reference kept monthly counts)."""
    months = (sorted(int(m) for m in recent["time"].dt.month.unique())
              if "time" in recent.columns and len(recent) else [])
    scores, used_months = {}, set()
    for name, ref in sorted(reference.items()):
        if name not in recent.columns:
            continue
        expected, used = seasonal_expected(ref, months)
        used_months.update(used)
        scores[name] = psi(ref, recent[name].to_numpy(), expected)
    finite = {k: v for k, v in scores.items() if np.isfinite(v)}
    drifted = sorted(k for k, v in finite.items() if v > psi_threshold)
    share = len(drifted) / len(finite) if finite else 0.0
    return {
        "psi": scores,
        "drifted_features": drifted,
        "share": share,
        "detected": bool(share > share_threshold),
        "psi_threshold": psi_threshold,
        "share_threshold": share_threshold,
        "rows": int(len(recent)),
        "recent_months": months,
        "reference_months": sorted(used_months),
        "seasonal": bool(used_months),
    }
