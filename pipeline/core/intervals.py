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
divided by a scale known at the origin, ``max(input, floor) ** power``, and the interval is
``log1p(p) + q * scale``. Two inputs are candidates (:func:`scale_candidates`): the RMS of
the last 24 hourly log changes (``<target>_vol24``), which tracks the next hours' errors, and
the relative spread of the last 72 hours (``<target>_std72 / <target>_mean72``), which tracks
the errors a day ahead; both at power 1 (errors in proportion: calibrated on one year and
scored on the next inside the real data sets' training periods, the volatility at power 1
strayed less from 80 % than at 0.5, docs/benchmarks.md). Each model keeps the one whose
intervals hold best from month to month of its calibration window (:func:`block_deviation`:
each twelfth of the window covered by the quantiles of the other eleven): a scale that only
describes the window's own weeks does not carry into the next year (docs/models.md has the
figures).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.core.aqi import CATEGORIES, category_thresholds
from pipeline.core.features import spread_columns, volatility_column
from pipeline.core.keys import ModelKey

LEVELS = tuple(round(x, 2) for x in np.linspace(0.01, 0.99, 99))
_LEVELS = np.array(LEVELS)  # the same, as numpy reads it (not converted per forecast)
MIN_ROWS_PER_LOCATION = 200  # fewer calibration rows: the location uses the pooled quantiles
COVERAGE = 0.8  # the interval's nominal coverage
LOWER, UPPER = "lower", "upper"
PROBABILITY_PREFIX = "p_reach_"
SCALE_POWER = 1.0  # errors grow in proportion to the recent volatility
SCALE_FLOOR = 0.02  # a scale input below this (a flat series) counts as this
PER_FLOOR = 0.5  # a mean below this (target units) counts as this in a relative spread
CHOICE_BLOCKS = 12  # time-ordered blocks of the window that judge a scale (about months)
CHOICE_MIN_ROWS = 1200  # fewer calibration rows: the first candidate, not judged


def scale_candidates(target: str, columns) -> list[dict]:
    """The scales a ``target`` interval may divide its errors by, those whose columns are in
    ``columns``, the default first: the last day's volatility, then the last 3 days' relative
    spread (:func:`pipeline.core.features.spread_columns`)."""
    std, mean = spread_columns(target)
    out = [{"column": volatility_column(target), "power": SCALE_POWER},
           {"column": std, "per": mean, "power": 1.0}]
    columns = set(columns)
    return [c for c in out if c["column"] in columns and c.get("per", c["column"]) in columns]


def scale_inputs(calibration: Mapping | None) -> list[str]:
    """The columns a calibration's scale reads (none when it does not scale)."""
    scale = (calibration or {}).get("scale") or {}
    return [c for c in (scale.get("column"), scale.get("per")) if c]


def scale_input(scale: Mapping, read) -> np.ndarray:
    """The rows' scale input: ``read(column)``, divided by ``max(read(per), PER_FLOOR)`` for a
    relative spread. ``read`` returns a column's values (raises when they are missing)."""
    values = np.asarray(read(scale["column"]), float)
    if scale.get("per"):
        values = values / np.maximum(np.asarray(read(scale["per"]), float), PER_FLOOR)
    return values


def scale_values(volatility, scale: Mapping | None) -> np.ndarray | float:
    """Each row's scale from its scale input (1 without a ``scale`` in the calibration); an
    unknown input takes the calibration window's median."""
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


def _scaled_residuals(observed, predicted, scale) -> np.ndarray:
    return (np.log1p(np.clip(observed, 0, None)) - np.log1p(np.clip(predicted, 0, None))) / scale


def block_deviation(observed, predicted, locations, scales, times,
                    coverage: float = COVERAGE, blocks: int = CHOICE_BLOCKS) -> float:
    """How far the interval's coverage strays from ``coverage`` across the window's time:
    the window cut into ``blocks`` time-ordered blocks of equal rows, each block covered by
    the (per-location) quantiles of the other blocks; the root mean square of the blocks'
    coverage minus ``coverage``. A scale that makes errors alike from season to season
    scores low; one that only averages out over the whole window scores high."""
    keep = np.isfinite(observed) & np.isfinite(predicted)
    z = _scaled_residuals(observed[keep], predicted[keep], scales[keep])
    locations, times = np.asarray(locations)[keep], np.asarray(times)[keep]
    order = np.argsort(times, kind="stable")
    block = np.empty(len(z), int)
    block[order] = np.arange(len(z)) * blocks // max(len(z), 1)
    tail = (1 - coverage) / 2
    deviations = []
    for k in range(blocks):
        inside, rest = block == k, block != k
        pooled = np.quantile(z[rest], (tail, 1 - tail))
        covered = 0
        for location in np.unique(locations[inside]):
            here = inside & (locations == location)
            own = rest & (locations == location)
            low, high = np.quantile(z[own], (tail, 1 - tail)) \
                if own.sum() >= MIN_ROWS_PER_LOCATION else pooled
            covered += int(((z[here] >= low) & (z[here] <= high)).sum())
        deviations.append(covered / inside.sum() - coverage)
    return float(np.sqrt(np.mean(np.square(deviations))))


def calibrate(observed, predicted, locations, volatility=None,
              scale_column: str | None = None, *, scales: Sequence | None = None,
              times=None) -> dict:
    """Pooled quantiles, and per-location ones where a location has enough rows.

    With ``volatility`` (each row's value of ``scale_column`` at its origin) the residuals
    are scaled (locally adaptive); the scale's settings travel in the result. ``scales``
    instead: candidates ``(spec, rows' scale input)`` (:func:`scale_candidates`,
    :func:`scale_input`), the one with the lowest :func:`block_deviation` over ``times``
    kept (the first when there is one, no ``times`` or under ``CHOICE_MIN_ROWS`` rows).
    """
    observed = np.asarray(observed, float)
    predicted = np.asarray(predicted, float)
    locations = np.asarray(locations)
    if volatility is not None:
        scales = [({"column": scale_column, "power": SCALE_POWER}, volatility)]
    candidates = []
    for spec, values in scales or ():
        known = np.asarray(values, float)
        known = known[np.isfinite(known)]
        scale = {**spec, "floor": SCALE_FLOOR,
                 "fill": round(float(np.median(known)), 6) if len(known) else SCALE_FLOOR}
        candidates.append((scale, np.broadcast_to(
            np.asarray(scale_values(values, scale), float), observed.shape)))
    judged = {}
    if len(candidates) > 1 and times is not None \
            and np.isfinite(observed).sum() >= CHOICE_MIN_ROWS:
        judged = {i: block_deviation(observed, predicted, locations, s, times)
                  for i, (_, s) in enumerate(candidates)}
    scale, scales = candidates[min(judged, key=judged.get) if judged else 0] \
        if candidates else (None, np.ones_like(observed))
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
    if judged:  # each candidate's block deviation, for the record
        out["scale_choice"] = [{**{k: c[k] for k in ("column", "per", "power") if k in c},
                                "block_deviation": round(judged[i], 4)}
                               for i, (c, _) in enumerate(candidates)]
    return out


def _ends(quantiles, coverage: float) -> np.ndarray:
    """The residual quantiles at the two ends of the central ``coverage`` interval."""
    tail = (1 - coverage) / 2
    return np.interp((tail, 1 - tail), _LEVELS, quantiles)


_ENDS: dict[tuple[int, float], tuple[object, np.ndarray]] = {}


def _ends_of(quantiles, coverage: float) -> np.ndarray:
    """:func:`_ends` of a calibration's quantiles, kept per quantiles object (a served
    champion's calibrations do not change: the same ends every forecast; read-only)."""
    key = (id(quantiles), coverage)
    found = _ENDS.get(key)
    if found is None or found[0] is not quantiles:
        if len(_ENDS) >= 1024:
            _ENDS.clear()
        ends = _ends(quantiles, coverage)
        ends.flags.writeable = False
        found = _ENDS[key] = (quantiles, ends)  # holds the object: its id stays its own
    return found[1]


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
            columns.update(scale_inputs(calibration))
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
        ends[i] = _ends_of(found, coverage)
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
        missing = [c for c in scale_inputs(calibration) if c not in out]
        if missing:
            raise ValueError(f"the {target} h={horizon} interval scales by {missing[0]!r}: "
                             "the forecasts must carry it")
        scale = calibration.get("scale")
        lower, upper, probabilities = uncertainty_of(
            target, out.loc[index, value].to_numpy(dtype=float), calibration, location,
            None if not scale else scale_input(
                scale, lambda c, rows=index: out.loc[rows, c].to_numpy(dtype=float)),
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
