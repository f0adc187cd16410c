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

Locally adaptive: errors are larger when the series is restless, so each residual is
divided by a scale known at the origin, ``max(volatility, floor) ** SCALE_POWER`` where the
volatility is the RMS of the last 24 hourly log changes (the ``<target>_vol24`` feature),
and the interval is ``log1p(p) + q * scale``. Without the division the intervals carry the
calibration window's average restlessness into calmer or wilder weeks (docs/models.md has
the coverage with the power 0, 0.5 and 1).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.core.aqi import CATEGORIES, category_thresholds
from pipeline.core.keys import ModelKey

LEVELS = tuple(round(x, 2) for x in np.linspace(0.01, 0.99, 99))
_LEVELS = np.array(LEVELS)  # the same, as numpy reads it (not converted per forecast)
MIN_ROWS_PER_LOCATION = 200  # fewer calibration rows: the location uses the pooled quantiles
COVERAGE = 0.8  # the interval's nominal coverage
LOWER, UPPER = "lower", "upper"
PROBABILITY_PREFIX = "p_reach_"
SCALE_POWER = 0.5  # errors grow with the recent volatility, less than proportionally
SCALE_FLOOR = 0.02  # a volatility below this (a flat series) counts as this


def scale_values(volatility, scale: Mapping | None) -> np.ndarray | float:
    """Each row's scale from its volatility (1 without a ``scale`` in the calibration); an
    unknown volatility takes the calibration window's median."""
    if not scale:
        return 1.0
    values = np.asarray(volatility, float)
    values = np.where(np.isfinite(values), values, scale["fill"])
    return np.maximum(values, scale["floor"]) ** scale["power"]


def residual_quantiles(observed, predicted, scale=1.0) -> list[float]:
    """Quantiles at ``LEVELS`` of (log1p(observed) - log1p(predicted)) / scale (NaN skipped)."""
    observed = np.asarray(observed, float)
    predicted = np.clip(np.asarray(predicted, float), 0, None)
    scale = np.broadcast_to(np.asarray(scale, float), observed.shape)
    keep = np.isfinite(observed) & np.isfinite(predicted)
    if keep.sum() < 20:
        raise ValueError(f"only {int(keep.sum())} calibration pairs: need at least 20")
    residuals = (np.log1p(np.clip(observed[keep], 0, None)) - np.log1p(predicted[keep])) \
        / scale[keep]
    return [round(float(q), 6) for q in np.quantile(residuals, LEVELS)]


def calibrate(observed, predicted, locations, volatility=None,
              scale_column: str | None = None) -> dict:
    """Pooled quantiles, and per-location ones where a location has enough rows.

    With ``volatility`` (each row's value of ``scale_column`` at its origin) the residuals
    are scaled (locally adaptive); the scale's settings travel in the result.
    """
    observed = np.asarray(observed, float)
    predicted = np.asarray(predicted, float)
    locations = np.asarray(locations)
    scale = None
    if volatility is not None:
        known = np.asarray(volatility, float)
        known = known[np.isfinite(known)]
        scale = {"column": scale_column, "power": SCALE_POWER, "floor": SCALE_FLOOR,
                 "fill": round(float(np.median(known)), 6) if len(known) else SCALE_FLOOR}
    scales = np.broadcast_to(np.asarray(scale_values(volatility, scale), float),
                             observed.shape)
    by_location = {}
    for location in sorted(set(locations.tolist())):
        mask = (locations == location) & np.isfinite(observed)
        if mask.sum() >= MIN_ROWS_PER_LOCATION:
            by_location[str(location)] = residual_quantiles(observed[mask], predicted[mask],
                                                            scales[mask])
    out = {"quantiles": residual_quantiles(observed, predicted, scales),
           "rows": int(np.isfinite(observed).sum()), "by_location": by_location}
    if scale is not None:
        out["scale"] = scale
    return out


def _ends(quantiles, coverage: float) -> np.ndarray:
    """The residual quantiles at the two ends of the central ``coverage`` interval."""
    tail = (1 - coverage) / 2
    return np.interp((tail, 1 - tail), _LEVELS, quantiles)


def _log_forecast(predicted) -> np.ndarray:
    return np.log1p(np.maximum(np.asarray(predicted, float), 0))


def _spread(base: np.ndarray, ends: np.ndarray, scale) -> tuple[np.ndarray, np.ndarray]:
    """The interval around log forecasts ``base`` (any shape, the last axis rows) from the
    quantiles at its ``ends`` (..., 2), clipped at 0."""
    return (np.maximum(np.expm1(base + ends[..., :1] * scale), 0),
            np.maximum(np.expm1(base + ends[..., 1:] * scale), 0))


def _needed(levels: np.ndarray, base: np.ndarray, scale) -> np.ndarray:
    """The scaled residual each log forecast needs to reach each level: (..., len(levels))."""
    scale = np.asarray(scale, float)
    return (levels - base[..., None]) / (scale[..., None] if scale.ndim else scale)


def interval(predicted, quantiles, coverage: float = COVERAGE,
             scale=1.0) -> tuple[np.ndarray, np.ndarray]:
    """The central ``coverage`` interval around each forecast (clipped at 0)."""
    return _spread(_log_forecast(predicted), _ends(quantiles, coverage), scale)


def exceedance_probabilities(predicted, quantiles, thresholds, scale=1.0) -> np.ndarray:
    """P(value >= threshold) of each forecast (rows) for each threshold (columns); resolution
    0.01 .. 0.99 (the levels)."""
    needed = _needed(np.log1p(np.asarray(thresholds, float)), _log_forecast(predicted), scale)
    below = np.interp(needed, quantiles, _LEVELS, left=0.0, right=1.0)
    return np.round(1.0 - below, 4)


def exceedance_probability(predicted, quantiles, threshold: float, scale=1.0) -> np.ndarray:
    """P(value >= threshold) for each forecast (:func:`exceedance_probabilities`)."""
    predicted = np.asarray(predicted, float)
    scale = np.broadcast_to(np.asarray(scale, float), predicted.shape)
    out = exceedance_probabilities(predicted.reshape(-1), quantiles, [threshold],
                                   scale.reshape(-1))
    return out[:, 0].reshape(predicted.shape)


def scale_columns(uncertainty: Mapping | None) -> list[str]:
    """The feature columns the calibrations scale by (what a forecast table must carry)."""
    columns = set()
    for by_h in ((uncertainty or {}).get("by_model") or {}).values():
        for calibration in by_h.values():
            column = ((calibration or {}).get("scale") or {}).get("column")
            if column:
                columns.add(column)
    return sorted(columns)


def model_calibration(uncertainty: Mapping, target: str, horizon: int) -> Mapping | None:
    key = ModelKey.of(target, horizon)
    return (uncertainty.get("by_model") or {}).get(key.target, {}).get(key.hours)


PROBABILITY_COLUMNS = tuple(PROBABILITY_PREFIX + c for c in CATEGORIES[1:])


@functools.lru_cache(maxsize=64)
def _thresholds(target: str) -> tuple[tuple[str, float], ...]:
    try:
        return tuple(category_thresholds(target).items())
    except ValueError:  # no AQI for this target: no category probabilities
        return ()


def uncertainty_of(target: str, predicted, calibration: Mapping, location: str,
                   volatility=None, coverage: float = COVERAGE,
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The interval and the probability of reaching each AQI category above good
    (``p_reach_<category>`` columns) of one model's forecasts at one ``location``.

    The location's own quantiles when it has them, else the pooled ones; ``volatility``
    holds the rows' values of the calibration's scale column (required when it scales).
    """
    lower, upper, chances = uncertainty_of_models(
        [target], np.asarray(predicted, float)[None, :], [calibration], location, [volatility],
        coverage)
    if not _thresholds(target):
        return lower[0], upper[0], {}
    return lower[0], upper[0], {name: chances[j, 0] for j, name in enumerate(PROBABILITY_COLUMNS)}


def uncertainty_of_models(targets: Sequence[str], predicted: np.ndarray,
                          calibrations: Sequence[Mapping], location: str,
                          volatility: Sequence[np.ndarray | None], coverage: float = COVERAGE,
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`uncertainty_of` of several models at once: ``predicted`` (models, rows) with
    each model's target, calibration and volatility (None: its calibration does not scale).

    Returns lower and upper (models, rows) and the probabilities (len(PROBABILITY_COLUMNS),
    models, rows; NaN for a target without AQI categories). One pass over all models' rows,
    each model's own quantiles read once: an online forecast (one row, a model per horizon)
    costs a few numpy calls per model instead of a few dozen.
    """
    predicted = np.asarray(predicted, float)
    m, n = predicted.shape
    ends = np.empty((m, 2))
    scales = np.ones((m, n))
    quantiles = []
    for i, (target, calibration) in enumerate(zip(targets, calibrations, strict=True)):
        found = (calibration.get("by_location") or {}).get(location, calibration["quantiles"])
        quantiles.append(found)
        ends[i] = _ends(found, coverage)
        scale = calibration.get("scale")
        if scale:
            if volatility[i] is None:
                raise ValueError(f"the {target} interval scales by {scale['column']!r}: the "
                                 "forecasts must carry it")
            scales[i] = scale_values(volatility[i], scale)
    base = _log_forecast(predicted)
    lower, upper = _spread(base, ends, scales)
    chances = np.full((len(PROBABILITY_COLUMNS), m, n), np.nan)
    for target in dict.fromkeys(targets):
        thresholds = _thresholds(target)
        if not thresholds:
            continue
        models = [i for i, t in enumerate(targets) if t == target]
        needed = _needed(np.log1p(np.array([t for _, t in thresholds], float)), base[models],
                         scales[models])
        below = np.empty_like(needed)
        for k, i in enumerate(models):
            below[k] = np.interp(needed[k], quantiles[i], _LEVELS, left=0.0, right=1.0)
        chances[:, models, :] = np.round(1.0 - below, 4).transpose(2, 0, 1)
    return lower, upper, chances


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
        calibration = model_calibration(uncertainty, target, horizon)
        if calibration is None:
            continue
        column = (calibration.get("scale") or {}).get("column")
        if column is not None and column not in out:
            raise ValueError(f"the {target} h={horizon} interval scales by {column!r}: "
                             "the forecasts must carry it")
        lower, upper, probabilities = uncertainty_of(
            target, out.loc[index, value].to_numpy(dtype=float), calibration, location,
            None if column is None else out.loc[index, column].to_numpy(dtype=float),
            coverage)
        out.loc[index, LOWER], out.loc[index, UPPER] = lower, upper
        for name, values in probabilities.items():
            if name not in out:
                out[name] = np.nan
            out.loc[index, name] = values
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
