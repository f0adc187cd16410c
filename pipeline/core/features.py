"""Feature engineering: per-location numpy kernels on a regular hourly grid, strictly causal.

Every feature at issue time ``t`` uses data at or before ``t`` only; labels
``y__<target>__h<h>`` hold the value at ``t + h`` and are never features.

One implementation serves the batch pipeline and the online endpoint:

- a location's history is an :class:`HourlyGrid` (one float64 array per canonical variable,
  one row per UTC hour, gaps are NaN);
- the features are a declarative list of :class:`FeatureBlock` (:func:`feature_blocks`), each
  a kernel that computes some named columns *at given positions* of a grid;
- lags read by index; a rolling statistic gathers its window into a row of its own, so a
  feature at ``t`` depends only on the ``lookback`` hours before it: evaluated at every
  position (:func:`build_features`, batch) or at the last position of a bounded window
  (:func:`latest_features`, serving), it gives the same value bit for bit.

To add a feature, add a block to :func:`feature_blocks` (its kernel receives the grid, the
positions and the columns computed so far) and declare its ``lookback``; both paths follow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.schema import KEYS, POLLUTANTS, TIME_DTYPE, VALUE_COLUMNS, WEATHER

LABEL_PREFIX = "y__"
PERSISTENCE_PREFIX = "base_persistence__"
SEASONAL_PREFIX = "base_seasonal__"
CALENDAR = ("hour_sin", "hour_cos", "dow_sin", "dow_cos", "is_weekend", "doy_sin", "doy_cos")


def label_column(target: str, horizon: int) -> str:
    return f"{LABEL_PREFIX}{target}__h{horizon}"


def seasonal_column(target: str, horizon: int) -> str:
    return f"{SEASONAL_PREFIX}{target}__h{horizon}"


def persistence_column(target: str) -> str:
    return f"{PERSISTENCE_PREFIX}{target}"


def anchor_column(target: str) -> str:
    return f"{target}_log"


@dataclass(frozen=True)
class FeatureSettings:
    """What the features are built from: plain values (``params.yaml``'s ``features``)."""

    lags: tuple[int, ...] = (1, 2, 3, 6, 12, 24, 48, 168)
    rolling_windows: tuple[int, ...] = (3, 6, 24, 72)
    co_pollutants: tuple[str, ...] = ("pm10", "no2", "o3", "co")
    co_pollutant_lags: tuple[int, ...] = (1, 24)
    weather: tuple[str, ...] = WEATHER

    @classmethod
    def of(cls, config: object) -> FeatureSettings:
        """From any object with these attributes (e.g. ``pipeline.config.FeatureConfig``)."""
        if isinstance(config, cls):
            return config
        return cls(**{name: tuple(getattr(config, name)) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class FeatureSpec:
    """What the features of a model were built from (stored with the model)."""

    targets: tuple[str, ...]
    horizons: tuple[int, ...]
    config: FeatureSettings = field(default_factory=FeatureSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "horizons", tuple(int(h) for h in self.horizons))
        object.__setattr__(self, "config", FeatureSettings.of(self.config))

    @property
    def warmup_hours(self) -> int:
        """History needed before the first complete feature row (the online window)."""
        return max(block.lookback for block in feature_blocks(self)) + 1


# --- the grid ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HourlyGrid:
    """One location's history: one row per UTC hour from ``start`` on, gaps are NaN.

    ``hours`` are hours since the Unix epoch; ``series`` maps each canonical variable to a
    float64 array of the same length.
    """

    location_id: str
    hours: np.ndarray
    series: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.hours)

    @classmethod
    def from_rows(cls, location_id: str, hours: np.ndarray,
                  values: Mapping[str, np.ndarray], start: int | None = None,
                  end: int | None = None) -> HourlyGrid:
        """Put rows at integer ``hours`` on the grid ``start..end`` (default: their span).

        Rows outside ``start..end`` are left out; a duplicated hour is an error.
        """
        hours = np.asarray(hours, dtype=np.int64)
        start = int(hours.min()) if start is None else int(start)
        end = int(hours.max()) if end is None else int(end)
        n = max(end - start + 1, 0)
        keep = (hours >= start) & (hours <= end)
        index = hours[keep] - start
        if len(np.unique(index)) != len(index):
            raise ValueError(f"duplicate hours for location {location_id!r}")
        series = {}
        for name in VALUE_COLUMNS:
            column = np.full(n, np.nan)
            if name in values:
                column[index] = np.asarray(values[name], dtype=np.float64)[keep]
            series[name] = column
        return cls(location_id, np.arange(start, start + n, dtype=np.int64), series)


def window(grid: HourlyGrid, start: int, end: int) -> HourlyGrid:
    """A copy of the grid's hours ``start..end`` (NaN where it has none)."""
    n = max(end - start + 1, 0)
    first = int(grid.hours[0]) if len(grid) else start
    lo, hi = max(start, first), min(end, first + len(grid) - 1)
    series = {}
    for name, values in grid.series.items():
        column = np.full(n, np.nan)
        if hi >= lo:
            column[lo - start:hi - start + 1] = values[lo - first:hi - first + 1]
        series[name] = column
    return HourlyGrid(grid.location_id, np.arange(start, start + n, dtype=np.int64), series)


def hour_numbers(times: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Hours since the Unix epoch of UTC on-the-hour timestamps."""
    values = pd.DatetimeIndex(times).tz_convert("UTC").tz_localize(None)
    return values.to_numpy().astype("datetime64[h]").astype(np.int64)


def hour_times(hours: np.ndarray) -> pd.DatetimeIndex:
    """The inverse of :func:`hour_numbers`, in the canonical time dtype."""
    stamps = np.asarray(hours, dtype=np.int64).astype("datetime64[h]").astype("datetime64[us]")
    return pd.DatetimeIndex(stamps).tz_localize("UTC").astype(TIME_DTYPE)


def hourly_grids(frame: pd.DataFrame) -> list[HourlyGrid]:
    """One grid per location (sorted ids), from its first to its last row."""
    grids = []
    for location_id, part in frame.groupby("location_id", sort=True):
        values = {c: part[c].to_numpy(dtype=np.float64) for c in VALUE_COLUMNS if c in part}
        grids.append(HourlyGrid.from_rows(str(location_id), hour_numbers(part["time"]), values))
    return grids


# --- kernels: values at positions ``pos`` of a grid, NaN where history is missing --------------


def shifted(x: np.ndarray, pos: np.ndarray, lags: np.ndarray | int) -> np.ndarray:
    """``x`` ``lag`` hours before each position (after, for a negative lag); NaN off the grid.

    One lag gives shape (len(pos),), an array of lags (len(pos), len(lags)).
    """
    source = pos[:, None] - np.atleast_1d(lags)[None, :]
    out = x.take(source, mode="clip") if len(x) else np.full(source.shape, np.nan)
    out[(source < 0) | (source >= len(x))] = np.nan
    return out if np.ndim(lags) else out[:, 0]


def windows(x: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` hours ending at each position (NaN before the grid): (len(pos), width).

    A copy per position, so a window's statistics depend on its own values only.
    """
    return shifted(x, pos, np.arange(width - 1, -1, -1))


def rolling_stats(x: np.ndarray, pos: np.ndarray, width: int, min_count: int,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation of each window's observed values.

    NaN when fewer than ``min_count`` values are observed (the standard deviation also
    needs two).
    """
    win = windows(x, pos, width)
    missing = np.isnan(win)
    count = width - missing.sum(axis=1)
    win[missing] = 0.0
    mean = win.sum(axis=1) / np.maximum(count, 1)
    win -= mean[:, None]
    win[missing] = 0.0
    std = np.sqrt((win * win).sum(axis=1) / np.maximum(count - 1, 1))
    mean[count < min_count] = np.nan
    std[(count < min_count) | (count < 2)] = np.nan
    return mean, std


def rolling_sum(x: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """Sum of each window's observed values; NaN when none is observed."""
    win = windows(x, pos, width)
    missing = np.isnan(win)
    win[missing] = 0.0
    total = win.sum(axis=1)
    total[missing.all(axis=1)] = np.nan
    return total


def anchor(level: np.ndarray, fallbacks: Iterable[np.ndarray]) -> np.ndarray:
    """The latest known level of a target at issue time: now, else an hour ago, else a day mean.

    Models forecast relative to it, so a level never seen in training still gets a forecast.
    """
    level = np.asarray(level, dtype=np.float64)
    for fallback in fallbacks:
        level = np.where(np.isnan(level), fallback, level)
    return np.clip(level, 0, None)


def local_clock(hours: np.ndarray, timezone: str) -> np.ndarray:
    """(local hour, local day of week, UTC day of year) of each hour: (len(hours), 3)."""
    utc = hour_times(hours)
    local = utc.tz_convert(timezone)
    return np.stack([local.hour.to_numpy(np.float64), local.day_of_week.to_numpy(np.float64),
                     utc.day_of_year.to_numpy(np.float64)], axis=1)


def calendar(hours: np.ndarray, timezone: str) -> np.ndarray:
    """The :data:`CALENDAR` columns of each hour in the location's time zone.

    A single hour is cached (the online path asks for the same hours again and again).
    """
    if len(hours) == 1:
        return _calendar_one(int(hours[0]), timezone)
    return _calendar_many(hours, timezone)


def _calendar_many(hours: np.ndarray, timezone: str) -> np.ndarray:
    clock = local_clock(hours, timezone)
    hour, dow, doy = clock[:, 0], clock[:, 1], clock[:, 2]
    return np.stack([
        np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24),
        np.sin(2 * np.pi * dow / 7), np.cos(2 * np.pi * dow / 7),
        (dow >= 5).astype(np.float64),
        np.sin(2 * np.pi * doy / 365.25), np.cos(2 * np.pi * doy / 365.25),
    ], axis=1)


@functools.lru_cache(maxsize=16384)
def _calendar_one(hour: int, timezone: str) -> np.ndarray:
    values = _calendar_many(np.array([hour], dtype=np.int64), timezone)
    values.flags.writeable = False
    return values


# --- the declarative feature list ----------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """What a kernel may know about a location besides its history."""

    timezone: str
    code: float


Kernel = Callable[[HourlyGrid, np.ndarray, Place, Mapping[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class FeatureBlock:
    """Columns computed together by one kernel.

    ``kernel(grid, pos, place, done)`` returns an array of shape (len(pos), len(columns))
    (or (len(pos),) for one column); ``done`` holds the columns of earlier blocks at ``pos``.
    ``lookback`` is how many hours before the issue hour it reads (through ``done`` too).
    """

    columns: tuple[str, ...]
    kernel: Kernel
    lookback: int = 0


def _value(var: str) -> FeatureBlock:
    return FeatureBlock((var,), lambda g, pos, p, done: g.series[var][pos])


def _lags(var: str, lags: Sequence[int]) -> FeatureBlock:
    steps = np.asarray(lags, dtype=np.int64)

    def kernel(g, pos, p, done):
        return shifted(g.series[var], pos, steps)

    return FeatureBlock(tuple(f"{var}_lag{lag}" for lag in lags), kernel, max(lags, default=0))


def _rolling(var: str, width: int) -> FeatureBlock:
    def kernel(g, pos, p, done):
        return np.stack(rolling_stats(g.series[var], pos, width, max(1, width // 2)), axis=1)

    return FeatureBlock((f"{var}_mean{width}", f"{var}_std{width}"), kernel, width - 1)


def _diffs(var: str, steps: Sequence[int]) -> FeatureBlock:
    back = np.asarray(steps, dtype=np.int64)

    def kernel(g, pos, p, done):
        x = g.series[var]
        return x[pos][:, None] - shifted(x, pos, back)

    return FeatureBlock(tuple(f"{var}_diff{k}" for k in steps), kernel, max(steps))


def _log_level(target: str, fallbacks: Sequence[str]) -> FeatureBlock:
    def kernel(g, pos, p, done):
        return np.log1p(anchor(done[target], [done[f] for f in fallbacks]))

    return FeatureBlock((anchor_column(target),), kernel)


def _relative(target: str, names: Sequence[str]) -> FeatureBlock:
    """Scale-free views: the same shape of a series means the same at 10 or 300 ug/m3."""

    def kernel(g, pos, p, done):
        return np.log1p(np.stack([done[n] for n in names], axis=1)) - done[
            anchor_column(target)][:, None]

    prefix = f"{target}_"
    return FeatureBlock(tuple(f"{target}_rel_{n[len(prefix):]}" for n in names), kernel)


def _wind(g, pos, p, done):
    speed = g.series["wind_speed_10m"][pos]
    rad = np.deg2rad(g.series["wind_direction_10m"][pos])
    # direction the wind comes from -> vector components of the flow
    return np.stack([-speed * np.sin(rad), -speed * np.cos(rad)], axis=1)


def _precipitation_sum24(g, pos, p, done):
    return rolling_sum(g.series["precipitation"], pos, 24)


def _calendar(g, pos, p, done):
    return calendar(g.hours[pos], p.timezone)


def _location_code(g, pos, p, done):
    return np.full(len(pos), p.code, dtype=np.float64)


@functools.lru_cache(maxsize=64)
def feature_blocks(spec: FeatureSpec) -> tuple[FeatureBlock, ...]:
    """Every model input, in column order."""
    cfg = spec.config
    blocks: list[FeatureBlock] = []
    for target in spec.targets:
        blocks.append(_value(target))
        if cfg.lags:
            blocks.append(_lags(target, cfg.lags))
        for width in cfg.rolling_windows:
            blocks.append(_rolling(target, width))
        blocks.append(_diffs(target, (1, 24)))
        fallbacks = [name for name in (f"{target}_lag1", f"{target}_mean24", f"{target}_mean72")
                     if any(name in b.columns for b in blocks)]
        blocks.append(_log_level(target, fallbacks))
        if cfg.lags:
            blocks.append(_relative(target, [f"{target}_lag{lag}" for lag in cfg.lags]))
        if cfg.rolling_windows:
            blocks.append(_relative(target, [f"{target}_mean{w}" for w in cfg.rolling_windows]))
    for pollutant in dict.fromkeys(cfg.co_pollutants):
        if pollutant in spec.targets:
            continue
        blocks.append(_value(pollutant))
        if cfg.co_pollutant_lags:
            blocks.append(_lags(pollutant, cfg.co_pollutant_lags))
    for var in dict.fromkeys(cfg.weather):
        blocks.append(_value(var))
    if "wind_speed_10m" in cfg.weather and "wind_direction_10m" in cfg.weather:
        blocks.append(FeatureBlock(("wind_u", "wind_v"), _wind))
    if "precipitation" in cfg.weather:
        blocks.append(FeatureBlock(("precipitation_sum24",), _precipitation_sum24, 23))
    blocks.append(FeatureBlock(CALENDAR, _calendar))
    blocks.append(FeatureBlock(("location_code",), _location_code))
    return tuple(blocks)


def _label_and_seasonal(target: str, horizon: int) -> FeatureBlock:
    # seasonal naive: the same hour of the last day known at issue time
    back = 24 * int(np.ceil(horizon / 24)) - horizon
    steps = np.array([-horizon, back], dtype=np.int64)

    def kernel(g, pos, p, done):
        return shifted(g.series[target], pos, steps)

    return FeatureBlock((label_column(target, horizon), seasonal_column(target, horizon)),
                        kernel, back)


def label_blocks(spec: FeatureSpec) -> tuple[FeatureBlock, ...]:
    """Labels and baselines (batch only: labels look ahead)."""
    blocks = []
    for target in spec.targets:
        blocks.append(FeatureBlock((persistence_column(target),),
                                   lambda g, pos, p, done, t=target: g.series[t][pos]))
        blocks += [_label_and_seasonal(target, horizon) for horizon in spec.horizons]
    return tuple(blocks)


def feature_names(spec: FeatureSpec) -> list[str]:
    return [c for block in feature_blocks(spec) for c in block.columns]


def evaluate(blocks: Sequence[FeatureBlock], grid: HourlyGrid, pos: np.ndarray, place: Place,
             ) -> dict[str, np.ndarray]:
    """Every block's columns at ``pos``, in order."""
    done: dict[str, np.ndarray] = {}
    for block in blocks:
        values = block.kernel(grid, pos, place, done)
        if values.ndim == 1:
            values = values[:, None]
        for i, column in enumerate(block.columns):
            done[column] = values[:, i]
    return done


# --- the two paths -------------------------------------------------------------------------


def build_features(
    frame: pd.DataFrame,
    spec: FeatureSpec,
    timezones: Mapping[str, str],
    location_codes: Mapping[str, int],
    with_labels: bool = True,
) -> pd.DataFrame:
    """Features (and optionally labels and baselines) for every location and hour (batch).

    ``frame`` holds validated canonical rows; each location is put on a regular hourly grid
    from its first to its last row, so that shifts are in hours, not rows.
    """
    blocks = feature_blocks(spec) + (label_blocks(spec) if with_labels else ())
    columns = [c for block in blocks for c in block.columns]
    parts: list[dict[str, np.ndarray]] = []
    ids: list[np.ndarray] = []
    hours: list[np.ndarray] = []
    for grid in hourly_grids(frame):
        place = Place(timezones[grid.location_id], _code(location_codes, grid.location_id))
        parts.append(evaluate(blocks, grid, np.arange(len(grid)), place))
        ids.append(np.full(len(grid), grid.location_id, dtype=object))
        hours.append(grid.hours)
    if not parts:
        empty = {k: frame.iloc[0:0][k] for k in KEYS}
        return pd.DataFrame({**empty, **{c: pd.Series(dtype="float64") for c in columns}})
    out = {
        "location_id": pd.array(np.concatenate(ids), dtype=frame["location_id"].dtype),
        "time": hour_times(np.concatenate(hours)),
    }
    for column in columns:
        out[column] = np.concatenate([part[column] for part in parts])
    return pd.DataFrame(out)


def latest_features(grid: HourlyGrid, spec: FeatureSpec, timezone: str, code: float,
                    ) -> dict[str, float]:
    """The feature row at the grid's last hour (online).

    Give it at least :attr:`FeatureSpec.warmup_hours` hours: the values then equal
    :func:`build_features`' row for that hour over the whole history.
    """
    if len(grid) == 0:
        raise ValueError(f"no history for location {grid.location_id!r}")
    done = evaluate(feature_blocks(spec), grid, np.array([len(grid) - 1]), Place(timezone, code))
    return {name: float(values[0]) for name, values in done.items()}


def features_present(rows: np.ndarray) -> np.ndarray:
    """Share of each row's model inputs that are known (not NaN): (n_rows, n_features) -> n_rows.

    The completeness of a forecast's inputs, the same figure for batch and online rows.
    """
    rows = np.atleast_2d(rows)
    if rows.shape[1] == 0:
        return np.ones(rows.shape[0])
    return 1.0 - np.isnan(rows).sum(axis=1) / rows.shape[1]


def hours_since_observed(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Hours from the newest observed value at or before each position to it; NaN if none.

    Looks back over the whole grid given (online: the bounded window).
    """
    observed = np.where(~np.isnan(x), np.arange(len(x)), -1)
    last = np.maximum.accumulate(observed)[pos] if len(x) else np.full(len(pos), -1)
    return np.where(last >= 0, pos - last, np.nan).astype(np.float64)


def _code(codes: Mapping[str, int], location_id: str) -> float:
    code = codes.get(location_id)
    return float("nan") if code is None else float(code)


def regular_grid(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per location and hour between its first and last observation; gaps are NaN."""
    grids = hourly_grids(frame)
    if not grids:
        return frame.iloc[0:0][list(KEYS) + list(VALUE_COLUMNS)]
    out = {
        "location_id": np.concatenate([np.full(len(g), g.location_id, dtype=object)
                                       for g in grids]),
        "time": hour_times(np.concatenate([g.hours for g in grids])),
    }
    for column in VALUE_COLUMNS:
        out[column] = np.concatenate([g.series[column] for g in grids])
    return pd.DataFrame(out)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The model inputs: everything but keys, labels and baselines."""
    skip = (LABEL_PREFIX, PERSISTENCE_PREFIX, SEASONAL_PREFIX)
    return [c for c in frame.columns if c not in KEYS and not c.startswith(skip)]


def location_codes(location_ids: Sequence[str]) -> dict[str, int]:
    """Stable integer codes for the location categorical feature (sorted ids)."""
    return {loc: i for i, loc in enumerate(sorted(location_ids))}


__all__ = [
    "FeatureBlock",
    "FeatureSettings",
    "FeatureSpec",
    "HourlyGrid",
    "POLLUTANTS",
    "build_features",
    "feature_blocks",
    "feature_columns",
    "feature_names",
    "features_present",
    "hours_since_observed",
    "window",
    "label_column",
    "latest_features",
    "location_codes",
    "persistence_column",
    "regular_grid",
    "seasonal_column",
]
