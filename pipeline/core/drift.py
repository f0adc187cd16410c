"""Population Stability Index of features: recent window vs the training reference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

EPS = 1e-4
# Calendar features and the location code move with the clock, not with the data.
NOT_MONITORED = ("hour_", "dow_", "doy_", "is_weekend", "location_code")


def monitored(features: Sequence[str]) -> list[str]:
    return [f for f in features if not f.startswith(NOT_MONITORED)]


def reference_distribution(frame: pd.DataFrame, features: Sequence[str], bins: int) -> dict:
    """Quantile bin edges and proportions of each feature, stored with the model."""
    reference = {}
    for name in monitored(features):
        values = frame[name].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, values, side="right"),
                             minlength=len(edges) + 1)
        reference[name] = {
            "edges": edges.tolist(),
            "proportions": (counts / counts.sum()).tolist(),
        }
    return reference


def psi(reference: dict, values: np.ndarray) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    edges = np.asarray(reference["edges"])
    expected = np.asarray(reference["proportions"])
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    actual = counts / counts.sum()
    expected = np.clip(expected, EPS, None)
    actual = np.clip(actual, EPS, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift_report(reference: dict, recent: pd.DataFrame, psi_threshold: float,
                 share_threshold: float) -> dict:
    scores = {
        name: psi(ref, recent[name].to_numpy())
        for name, ref in sorted(reference.items())
        if name in recent.columns
    }
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
    }
