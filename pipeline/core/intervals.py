"""Prediction intervals and exceedance probabilities from calibration residuals.

Split conformal prediction in log space: a model's errors
``r = log1p(observed) - log1p(predicted)`` on a time-ordered validation window
it was not fitted on (inside the training period, never the holdout) give the
quantiles of r at ``LEVELS``. A forecast ``p`` then has the predictive
distribution ``expm1(log1p(p) + r)``: its 10 % and 90 % quantiles are the 80 %
interval, and the share of r above ``log1p(c) - log1p(p)`` is the probability of
reaching concentration ``c`` (an AQI category boundary). Errors in log space scale
with the level; they still differ between places (a polluted city's relative errors
are smaller), so each location with enough calibration rows gets its own quantiles
(Mondrian conformal prediction), and any other location the pooled ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from pipeline.core.aqi import category_thresholds

LEVELS = tuple(round(x, 2) for x in np.linspace(0.01, 0.99, 99))
MIN_ROWS_PER_LOCATION = 200  # fewer calibration rows: the location uses the pooled quantiles
COVERAGE = 0.8  # the interval's nominal coverage
LOWER, UPPER = "lower", "upper"
PROBABILITY_PREFIX = "p_reach_"


def residual_quantiles(observed, predicted) -> list[float]:
    """Quantiles at ``LEVELS`` of log1p(observed) - log1p(predicted) (NaN pairs skipped)."""
    observed = np.asarray(observed, float)
    predicted = np.clip(np.asarray(predicted, float), 0, None)
    keep = np.isfinite(observed) & np.isfinite(predicted)
    if keep.sum() < 20:
        raise ValueError(f"only {int(keep.sum())} calibration pairs: need at least 20")
    residuals = np.log1p(np.clip(observed[keep], 0, None)) - np.log1p(predicted[keep])
    return [round(float(q), 6) for q in np.quantile(residuals, LEVELS)]


def calibrate(observed, predicted, locations) -> dict:
    """Pooled quantiles, and per-location ones where a location has enough rows."""
    observed = np.asarray(observed, float)
    predicted = np.asarray(predicted, float)
    locations = np.asarray(locations)
    by_location = {}
    for location in sorted(set(locations.tolist())):
        mask = (locations == location) & np.isfinite(observed)
        if mask.sum() >= MIN_ROWS_PER_LOCATION:
            by_location[str(location)] = residual_quantiles(observed[mask], predicted[mask])
    return {"quantiles": residual_quantiles(observed, predicted),
            "rows": int(np.isfinite(observed).sum()), "by_location": by_location}


def _quantile(quantiles, level: float) -> float:
    return float(np.interp(level, LEVELS, quantiles))


def interval(predicted, quantiles, coverage: float = COVERAGE) -> tuple[np.ndarray, np.ndarray]:
    """The central ``coverage`` interval around each forecast (clipped at 0)."""
    base = np.log1p(np.clip(np.asarray(predicted, float), 0, None))
    tail = (1 - coverage) / 2
    lower = np.expm1(base + _quantile(quantiles, tail))
    upper = np.expm1(base + _quantile(quantiles, 1 - tail))
    return np.clip(lower, 0, None), np.clip(upper, 0, None)


def exceedance_probability(predicted, quantiles, threshold: float) -> np.ndarray:
    """P(value >= threshold) for each forecast; resolution 0.01 .. 0.99 (the levels)."""
    base = np.log1p(np.clip(np.asarray(predicted, float), 0, None))
    needed = np.log1p(threshold) - base
    below = np.interp(needed, quantiles, LEVELS, left=0.0, right=1.0)
    return np.round(1.0 - below, 4)


def model_calibration(uncertainty: Mapping, target: str, horizon: int) -> Mapping | None:
    return (uncertainty.get("by_model") or {}).get(target, {}).get(str(horizon))


def add_uncertainty(forecasts: pd.DataFrame, uncertainty: Mapping,
                    value: str = "value") -> pd.DataFrame:
    """Interval columns and one ``p_reach_<category>`` column per AQI category above good.

    Rows of a model without calibration keep NaN (the metadata says why).
    """
    out = forecasts.copy()
    out[LOWER] = np.nan
    out[UPPER] = np.nan
    coverage = uncertainty.get("coverage", COVERAGE)
    groups = out.groupby(["target", "horizon", "location_id"]).groups
    for (target, horizon, location), index in groups.items():
        calibration = model_calibration(uncertainty, target, int(horizon))
        if calibration is None:
            continue
        quantiles = (calibration.get("by_location") or {}).get(location,
                                                              calibration["quantiles"])
        predicted = out.loc[index, value].to_numpy(dtype=float)
        out.loc[index, LOWER], out.loc[index, UPPER] = interval(predicted, quantiles, coverage)
        try:
            thresholds = category_thresholds(target)
        except ValueError:
            continue
        for category, threshold in thresholds.items():
            column = PROBABILITY_PREFIX + category
            if column not in out:
                out[column] = np.nan
            out.loc[index, column] = exceedance_probability(predicted, quantiles, threshold)
    return out


def exceedance_next_24h(forecasts: pd.DataFrame) -> pd.DataFrame:
    """Per location and target, the largest probability over the horizons <= 24 h of reaching
    each category: a lower bound on the chance that some hour of the next day reaches it."""
    columns = [c for c in forecasts.columns if c.startswith(PROBABILITY_PREFIX)]
    day = forecasts[forecasts["horizon"] <= 24]
    if not columns or day.empty:
        return pd.DataFrame(columns=["location_id", "target", "category", "probability"])
    best = day.groupby(["location_id", "target"])[columns].max().reset_index()
    long = best.melt(["location_id", "target"], var_name="category", value_name="probability")
    long["category"] = long["category"].str.removeprefix(PROBABILITY_PREFIX)
    return long.dropna(subset=["probability"]).reset_index(drop=True)
