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

Features of the **target hour** (per horizon ``h``: the weather forecast issued at or before
the origin for ``t + h``, the calendar of ``t + h``, the location's usual level at that hour of
day and week) are columns named ``<name>__h<h>``; the model of horizon ``h`` uses the common
columns and its own (:func:`columns_for_horizon`). Weather forecasts come with the grid
(:class:`ForecastGrid`): only runs issued at or before an origin are ever read for it.

To add a feature, add a block to :func:`feature_blocks` (its kernel receives the grid, the
positions and the columns computed so far) and declare its ``lookback``; both paths follow.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.schema import (
    KEYS,
    POLLUTANTS,
    TIME_DTYPE,
    VALUE_COLUMNS,
    WEATHER,
    covariate_column,
    covariate_columns,
)

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


_HORIZON_SUFFIX = re.compile(r"__h(\d+)$")


def horizon_column(name: str, horizon: int) -> str:
    """A feature of the target hour ``t + horizon`` (used by that horizon's model only)."""
    return f"{name}__h{horizon}"


def column_horizon(column: str) -> int | None:
    """The horizon a target-hour feature belongs to; None for a feature of every horizon."""
    match = _HORIZON_SUFFIX.search(column)
    return int(match.group(1)) if match else None


def columns_for_horizon(columns: Sequence[str], horizon: int) -> list[str]:
    """The inputs of the model of ``horizon``: common columns and its own target-hour ones."""
    return [c for c in columns if column_horizon(c) in (None, int(horizon))]


@dataclass(frozen=True)
class FeatureSettings:
    """What the features are built from: plain values (``params.yaml``'s ``features``)."""

    lags: tuple[int, ...] = (1, 2, 3, 6, 12, 24, 48, 168)
    rolling_windows: tuple[int, ...] = (3, 6, 24, 72)
    co_pollutants: tuple[str, ...] = ("pm10", "no2", "o3", "co")
    co_pollutant_lags: tuple[int, ...] = (1, 24)
    weather: tuple[str, ...] = WEATHER
    # target-hour features (per horizon): weather forecast variables, calendar, usual profile
    forecast_weather: tuple[str, ...] = WEATHER
    target_calendar: bool = False
    profiles: bool = True
    trend: bool = True
    anomalies: bool = False  # the level now against its usual level at this hour of day / week
    weather_lags: tuple[int, ...] = ()  # the observed weather (wind as a vector) hours ago
    covariates: tuple[str, ...] = ()  # extra numeric inputs (stored as cov_<name>)

    @classmethod
    def of(cls, config: object) -> FeatureSettings:
        """From any object with these attributes (e.g. ``pipeline.config.FeatureConfig``);
        an attribute it lacks (a model trained before the setting existed) is off."""
        if isinstance(config, cls):
            return config
        values = {}
        for name, spec in cls.__dataclass_fields__.items():
            if spec.type in ("bool", bool):
                values[name] = bool(getattr(config, name, False))
            else:
                values[name] = tuple(getattr(config, name, None) or ())
        return cls(**values)


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
class ForecastGrid:
    """One location's weather forecasts: the runs issued at ``issues`` (hours since the Unix
    epoch, ascending), each an array over leads 0..``max_lead`` per variable (NaN: none)."""

    issues: np.ndarray
    series: Mapping[str, np.ndarray]  # variable -> (len(issues), max_lead + 1)

    @property
    def max_lead(self) -> int:
        first = next(iter(self.series.values()), None)
        return -1 if first is None else first.shape[1] - 1

    def __len__(self) -> int:
        return len(self.issues)

    @classmethod
    def from_rows(cls, issue_hours: np.ndarray, valid_hours: np.ndarray,
                  values: Mapping[str, np.ndarray]) -> ForecastGrid:
        """Rows (issue hour, valid hour, values) as runs x leads; leads < 1 are left out."""
        issue_hours = np.asarray(issue_hours, dtype=np.int64)
        lead = np.asarray(valid_hours, dtype=np.int64) - issue_hours
        keep = lead >= 1
        issues, row = np.unique(issue_hours[keep], return_inverse=True)
        max_lead = int(lead[keep].max()) if keep.any() else 0
        series = {}
        for name in WEATHER:
            table = np.full((len(issues), max_lead + 1), np.nan)
            if name in values:
                table[row, lead[keep]] = np.asarray(values[name], dtype=np.float64)[keep]
            series[name] = table
        return cls(issues, series)

    def since(self, hour: int) -> ForecastGrid:
        """The runs issued at or after ``hour`` (a bounded window for the online path)."""
        keep = self.issues >= hour
        if keep.all():  # itself: the copy would compute ``known`` again
            return self
        return ForecastGrid(self.issues[keep], {k: v[keep] for k, v in self.series.items()})

    def until(self, hour: int) -> ForecastGrid:
        """The runs issued at or before ``hour`` (what was known then)."""
        keep = self.issues <= hour
        return ForecastGrid(self.issues[keep], {k: v[keep] for k, v in self.series.items()})

    @functools.cached_property
    def cube(self) -> tuple[np.ndarray, dict[str, int]]:
        """Every variable's (run, lead) table stacked (variable, run, lead), and each
        variable's position: all variables of given cells in one gather."""
        names = list(self.series)
        stacked = (np.stack([self.series[n] for n in names]) if names
                   else np.zeros((0, len(self.issues), 1)))
        return stacked, {name: i for i, name in enumerate(names)}

    @functools.cached_property
    def memo(self) -> dict[Hashable, np.ndarray]:
        """Values computed from these runs for one origin (``_forecast``): the runs never
        change, so an origin asked again reads them here."""
        return {}

    @functools.cached_property
    def known(self) -> np.ndarray:
        """(run, lead) cells with at least one forecast value."""
        cells = [~np.isnan(v) for v in self.series.values()]
        return np.logical_or.reduce(cells) if cells else np.zeros((0, 1), dtype=bool)

    def at(self, origins: np.ndarray, horizon: int | np.ndarray,
           ) -> tuple[np.ndarray, np.ndarray]:
        """(run row, lead) of the newest run issued at or before each origin that forecasts
        the hour ``origin + horizon`` (one horizon, or one per origin); row -1 where no run
        does.

        Usually the newest run; an older one when the newest lacks the hour (its leads stop
        short, or a provider that gives one lead per valid hour, such as Open-Meteo's
        previous-runs archive).
        """
        origins = np.asarray(origins, dtype=np.int64)
        row = np.searchsorted(self.issues, origins, side="right") - 1
        lead = np.zeros(len(origins), dtype=np.int64)
        found = np.full(len(origins), -1, dtype=np.int64)
        if not len(self.issues):
            return found, lead
        target = origins + horizon
        todo = row >= 0
        while todo.any():
            lead_now = target[todo] - self.issues[row[todo]]
            in_range = lead_now <= self.max_lead
            index = np.flatnonzero(todo)
            usable = in_range & (lead_now >= 1)
            hit = np.zeros(len(index), dtype=bool)
            hit[usable] = self.known[row[index[usable]], lead_now[usable]]
            found[index[hit]] = row[index[hit]]
            lead[index[hit]] = lead_now[hit]
            # older runs only have longer leads: stop where this one is already out of range
            todo[index[hit | ~in_range]] = False
            row[index[~hit & in_range]] -= 1
            todo &= row >= 0
        return found, lead

    def values(self, name: str, row: np.ndarray, lead: np.ndarray) -> np.ndarray:
        out = np.full(len(row), np.nan)
        ok = row >= 0
        if ok.any():
            out[ok] = self.series[name][row[ok], lead[ok]]
        return out


@dataclass(frozen=True)
class HourlyGrid:
    """One location's history: one row per UTC hour from ``start`` on, gaps are NaN.

    ``hours`` are hours since the Unix epoch; ``series`` maps each canonical variable to a
    float64 array of the same length; ``forecasts`` are the weather forecasts of the location
    (None: the source has none).
    """

    location_id: str
    hours: np.ndarray
    series: Mapping[str, np.ndarray]
    forecasts: ForecastGrid | None = None
    # the series as the rows of one (variable, hour) array, in ``series`` order, when they are
    # (``from_rows`` and ``window`` make them so; writing into a series writes into it): the
    # one-row path reads every lag of every variable from it in one gather (``evaluate``)
    table: np.ndarray | None = field(default=None, repr=False, compare=False)

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
        names = (*VALUE_COLUMNS, *covariate_columns(values))
        table = np.full((len(names), n), np.nan)
        for row, name in zip(table, names, strict=True):
            if name in values:
                row[index] = np.asarray(values[name], dtype=np.float64)[keep]
        return cls(location_id, np.arange(start, start + n, dtype=np.int64),
                   dict(zip(names, table, strict=True)), table=table)


def window(grid: HourlyGrid, start: int, end: int) -> HourlyGrid:
    """A copy of the grid's hours ``start..end`` (NaN where it has none), with the forecast
    runs that can still cover an hour after ``start`` (an origin only ever reads the runs
    issued by its own hour)."""
    n = max(end - start + 1, 0)
    first = int(grid.hours[0]) if len(grid) else start
    lo, hi = max(start, first), min(end, first + len(grid) - 1)
    names = list(grid.series)
    table = np.full((len(names), n), np.nan)
    if hi >= lo:
        if grid.table is not None:  # every series in one copy
            table[:, lo - start:hi - start + 1] = grid.table[:, lo - first:hi - first + 1]
        else:
            for row, values in zip(table, grid.series.values(), strict=True):
                row[lo - start:hi - start + 1] = values[lo - first:hi - first + 1]
    forecasts = None if grid.forecasts is None else grid.forecasts.since(
        start - max(grid.forecasts.max_lead, 0))
    return HourlyGrid(grid.location_id, np.arange(start, start + n, dtype=np.int64),
                      dict(zip(names, table, strict=True)), forecasts, table)


def hour_numbers(times: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Hours since the Unix epoch of UTC on-the-hour timestamps."""
    values = pd.DatetimeIndex(times).tz_convert("UTC").tz_localize(None)
    return values.to_numpy().astype("datetime64[h]").astype(np.int64)


def hour_times(hours: np.ndarray) -> pd.DatetimeIndex:
    """The inverse of :func:`hour_numbers`, in the canonical time dtype."""
    stamps = np.asarray(hours, dtype=np.int64).astype("datetime64[h]").astype("datetime64[us]")
    return pd.DatetimeIndex(stamps).tz_localize("UTC").astype(TIME_DTYPE)


def hourly_grids(frame: pd.DataFrame, forecasts: pd.DataFrame | None = None,
                 ) -> list[HourlyGrid]:
    """One grid per location (sorted ids), from its first to its last row, with its weather
    forecasts (``pipeline.schema.FORECAST_COLUMNS`` rows) when given."""
    runs = forecast_grids(forecasts) if forecasts is not None else {}
    grids = []
    names = (*VALUE_COLUMNS, *covariate_columns(frame.columns))
    for location_id, part in frame.groupby("location_id", sort=True):
        values = {c: part[c].to_numpy(dtype=np.float64) for c in names if c in part}
        grid = HourlyGrid.from_rows(str(location_id), hour_numbers(part["time"]), values)
        if forecasts is not None:
            grid = dataclasses.replace(grid, forecasts=runs.get(
                grid.location_id, ForecastGrid.from_rows(np.empty(0), np.empty(0), {})))
        grids.append(grid)
    return grids


def forecast_grids(forecasts: pd.DataFrame) -> dict[str, ForecastGrid]:
    """One :class:`ForecastGrid` per location of a forecast frame."""
    out = {}
    for location_id, part in forecasts.groupby("location_id", sort=True):
        out[str(location_id)] = ForecastGrid.from_rows(
            hour_numbers(part["issue_time"]), hour_numbers(part["time"]),
            {c: part[c].to_numpy(dtype=np.float64) for c in WEATHER if c in part})
    return out


# --- kernels: values at positions ``pos`` of a grid, NaN where history is missing --------------


def shifted(x: np.ndarray, pos: np.ndarray, lags: np.ndarray | int) -> np.ndarray:
    """``x`` ``lag`` hours before each position (after, for a negative lag); NaN off the grid.

    One lag gives shape (len(pos),), an array of lags (len(pos), len(lags)).
    """
    steps = np.atleast_1d(lags)
    if len(pos) == 1 and len(x):  # one position (online): a plain gather when all are on the grid
        source = int(pos[0]) - steps
        if source.min() >= 0 and source.max() < len(x):
            out = x[source][None, :]
            return out if np.ndim(lags) else out[:, 0]
    source = pos[:, None] - steps[None, :]
    out = x.take(source, mode="clip") if len(x) else np.full(source.shape, np.nan)
    out[(source < 0) | (source >= len(x))] = np.nan
    return out if np.ndim(lags) else out[:, 0]


def side_by_side(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``np.stack(arrays, axis=-1)``: the same new array, without np.stack's Python set-up (a
    kernel's few columns of one row cost more in np.stack than in the arithmetic)."""
    first = arrays[0]
    out = np.empty((*np.shape(first), len(arrays)))
    for j, values in enumerate(arrays):
        out[..., j] = values
    return out


def windows(x: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` hours ending at each position (NaN before the grid): (len(pos), width).

    A copy per position, so a window's statistics depend on its own values only.
    """
    if len(pos) == 1 and width - 1 <= pos[0] < len(x):  # one position on the grid: a slice
        end = int(pos[0]) + 1
        return x[end - width:end][None, :].copy()
    return shifted(x, pos, np.arange(width - 1, -1, -1))


def rolling_stats(x: np.ndarray, pos: np.ndarray, width: int, min_count: int,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation of each window's observed values.

    NaN when fewer than ``min_count`` values are observed (the standard deviation also
    needs two).
    """
    win = windows(x, pos, width)
    missing = np.isnan(win)
    if len(pos) == 1 and width >= max(min_count, 2) and not missing.any():
        # one window (online), every value observed: the same sums without the masks
        return _known_stats(win)
    count = width - missing.sum(axis=1)
    win[missing] = 0.0
    mean = win.sum(axis=1) / np.maximum(count, 1)
    win -= mean[:, None]
    win[missing] = 0.0
    std = np.sqrt((win * win).sum(axis=1) / np.maximum(count - 1, 1))
    mean[count < min_count] = np.nan
    std[(count < min_count) | (count < 2)] = np.nan
    return mean, std


def _known_stats(win: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rolling_stats` of windows (rows) whose every value is observed: the masked
    path's sums and divisions, without the masks."""
    width = win.shape[1]
    mean = win.sum(axis=1) / width
    spread = win - mean[:, None]
    return mean, np.sqrt((spread * spread).sum(axis=1) / (width - 1))


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
        missing = np.isnan(level)
        if not missing.any():
            break
        level = np.where(missing, fallback, level)
    return np.maximum(level, 0)


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


class Columns(dict):
    """The columns computed so far at the positions of one evaluation (name -> values), and
    what several blocks of that evaluation share.

    :meth:`shared` computes a value once per evaluation: the blocks of the target hour, one
    per horizon, read every horizon's values from one computation (one numpy call for all
    horizons instead of one per horizon: on the online path's single row, the calls are the
    cost). Both paths evaluate the same blocks, so they share the same way.
    """

    def __init__(self, layout: Mapping[str, tuple[int, int]] | None = None) -> None:
        super().__init__()
        self._shared: dict[Hashable, np.ndarray] = {}
        self._layout = layout or {}
        self.tables: list[np.ndarray] = []  # each block's values (len(pos), its columns)

    def __missing__(self, column: str) -> np.ndarray:
        """A column's view into its block's table, made when first read (a one-row
        evaluation then makes a view per column it reads, not per column it computes)."""
        try:
            block, i = self._layout[column]
        except KeyError:
            raise KeyError(column) from None
        if block >= len(self.tables):
            raise KeyError(column)
        found = self[column] = self.tables[block][:, i]
        return found

    def side_by_side(self, names: Sequence[str]) -> np.ndarray:
        """Columns ``names`` as one (rows, len(names)) array: a view of their block's table
        when they are its consecutive columns (a block's lags), else a new array."""
        spots = [self._layout.get(name) for name in names]
        first = spots[0]
        if (first is not None and first[0] < len(self.tables)
                and spots == [(first[0], first[1] + j) for j in range(len(spots))]):
            return self.tables[first[0]][:, first[1]:first[1] + len(spots)]
        return side_by_side([self[name] for name in names])

    def shared(self, key: Hashable, make: Callable[[], np.ndarray]) -> np.ndarray:
        found = self._shared.get(key)
        if found is None:
            found = self._shared[key] = make()
        return found


Kernel = Callable[[HourlyGrid, np.ndarray, Place, Columns], np.ndarray]


@dataclass(frozen=True)
class FeatureBlock:
    """Columns computed together by one kernel.

    ``kernel(grid, pos, place, done)`` returns an array of shape (len(pos), len(columns))
    (or (len(pos),) for one column); ``done`` holds the columns of earlier blocks at ``pos``
    (and :meth:`Columns.shared`, for work several blocks share). ``lookback`` is how many
    hours before the issue hour it reads (through ``done`` too).

    ``gather`` declares a block that only copies values: ``(variable, steps)``, its columns
    being the variable ``steps`` hours before each position (NaN off the grid, or when the
    grid lacks the variable), which is what its kernel computes. On one position (online)
    :func:`evaluate` reads every such block of the list in one gather instead of calling
    each kernel (the same values: a copy is a copy); everywhere else the kernel runs.
    """

    columns: tuple[str, ...]
    kernel: Kernel
    lookback: int = 0
    gather: tuple[str, tuple[int, ...]] | None = None


def _series(g: HourlyGrid, var: str) -> np.ndarray:
    """A variable of the grid; all NaN when the data have none (a covariate not stored)."""
    values = g.series.get(var)
    return np.full(len(g), np.nan) if values is None else values


def _value(var: str) -> FeatureBlock:
    return FeatureBlock((var,), lambda g, pos, p, done: _series(g, var)[pos], gather=(var, (0,)))


def _lags(var: str, lags: Sequence[int]) -> FeatureBlock:
    steps = np.asarray(lags, dtype=np.int64)

    def kernel(g, pos, p, done):
        return shifted(_series(g, var), pos, steps)

    return FeatureBlock(tuple(f"{var}_lag{lag}" for lag in lags), kernel, max(lags, default=0),
                        gather=(var, tuple(int(lag) for lag in lags)))


def _rolling(var: str, widths: Sequence[int]) -> FeatureBlock:
    """The mean and standard deviation of each window width, in one block (one kernel call
    for every width: on the online path's one row, the calls are the cost)."""
    widths = tuple(int(w) for w in widths)
    longest = max(widths)

    def kernel(g, pos, p, done):
        x = g.series[var]
        if len(pos) == 1 and min(widths) >= 2 and longest - 1 <= pos[0] < len(x):
            # one row (online): every width is the end of the longest window; when all of
            # it is observed, each width's statistics without masks (rolling_stats' sums)
            last = x[int(pos[0]) + 1 - longest:int(pos[0]) + 1][None, :]
            if not np.isnan(last).any():
                return side_by_side([stat for width in widths
                                     for stat in _known_stats(last[:, longest - width:])])
        return side_by_side([stat for width in widths
                             for stat in rolling_stats(x, pos, width, max(1, width // 2))])

    columns = [name for width in widths for name in spread_columns(var, width)[::-1]]
    return FeatureBlock(tuple(columns), kernel, max(widths) - 1)


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
        return np.log1p(done.side_by_side(names)) - done[anchor_column(target)][:, None]

    prefix = f"{target}_"
    return FeatureBlock(tuple(f"{target}_rel_{n[len(prefix):]}" for n in names), kernel)


def _wind(g, pos, p, done):
    speed = g.series["wind_speed_10m"][pos]
    rad = np.deg2rad(g.series["wind_direction_10m"][pos])
    # direction the wind comes from -> vector components of the flow
    return side_by_side([-speed * np.sin(rad), -speed * np.cos(rad)])


def _wind_lags(lags: Sequence[int]) -> FeatureBlock:
    """The wind vector ``lag`` hours ago (a direction in degrees does not lag well: 359 ~ 1)."""
    steps = np.asarray(lags, dtype=np.int64)

    def kernel(g, pos, p, done):
        speed = shifted(g.series["wind_speed_10m"], pos, steps)
        rad = np.deg2rad(shifted(g.series["wind_direction_10m"], pos, steps))
        return np.concatenate([-speed * np.sin(rad), -speed * np.cos(rad)], axis=1)

    names = [f"wind_u_lag{lag}" for lag in lags] + [f"wind_v_lag{lag}" for lag in lags]
    return FeatureBlock(tuple(names), kernel, max(lags, default=0))


def _precipitation_sum24(g, pos, p, done):
    return rolling_sum(g.series["precipitation"], pos, 24)


def _calendar(g, pos, p, done):
    return calendar(g.hours[pos], p.timezone)


def _location_code(g, pos, p, done):
    return np.full(len(pos), p.code, dtype=np.float64)


def _observed_mean(values: np.ndarray, min_count: int) -> np.ndarray:
    """Means of the observed values of ``values`` along its last axis; NaN below
    ``min_count``."""
    missing = np.isnan(values)
    if values.shape[-1] >= min_count and not missing.any():  # every value known: no masks
        return values.sum(axis=-1) / values.shape[-1]
    count = values.shape[-1] - missing.sum(axis=-1)
    total = np.where(missing, 0.0, values).sum(axis=-1)
    return np.where(count >= min_count, total / np.maximum(count, 1), np.nan)


def _profile_offsets(horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Hours before the origin of the same hour of day as ``t + horizon`` on the last 7 days
    known, and of the same hour of week on the last 4 weeks."""
    first_day = max(1, -(-horizon // 24))
    daily = 24 * np.arange(first_day, first_day + 7, dtype=np.int64) - horizon
    first_week = max(1, -(-horizon // 168))
    weekly = 168 * np.arange(first_week, first_week + 4, dtype=np.int64) - horizon
    return daily, weekly


def _profiles(target: str, horizon: int, horizons: Sequence[int]) -> FeatureBlock:
    """The location's usual level at the target hour, from history known at the origin.

    - ``rel_daily_profile``: the mean of the same hour of day over the last 7 days known
      (``t + h - 24k``), relative to the level now (log1p);
    - ``rel_weekly_profile``: the same hour of the same weekday over the last 4 weeks;
    - ``diurnal_shape``: the daily profile against the mean of the last 7 days (how much
      higher or lower that hour of day usually is, whatever the level now).

    The blocks of all ``horizons`` share one computation per evaluation (one gather of every
    horizon's hours, :meth:`Columns.shared`); each takes its own horizon's columns.
    """
    horizons = tuple(int(h) for h in horizons)
    k = horizons.index(horizon)
    offsets = [_profile_offsets(h) for h in horizons]
    daily = np.concatenate([d for d, _ in offsets])  # horizon-major: (len(horizons) * 7,)
    weekly = np.concatenate([w for _, w in offsets])
    back = np.concatenate([daily, weekly])
    columns = tuple(horizon_column(f"{target}_{name}", horizon)
                    for name in ("rel_daily_profile", "rel_weekly_profile", "diurnal_shape"))

    def every_horizon(g: HourlyGrid, pos: np.ndarray, done: Columns) -> np.ndarray:
        x = g.series[target]
        n, m = len(pos), len(horizons)
        level = done[anchor_column(target)][:, None]
        hours = shifted(x, pos, back)  # every horizon's days, then its weeks: one gather
        day = np.log1p(_observed_mean(hours[:, :7 * m].reshape(n, m, 7), 4))
        week = np.log1p(_observed_mean(hours[:, 7 * m:].reshape(n, m, 4), 2))
        # the mean of the last 7 days (rolling_stats' mean: the same sum and count)
        mean = np.log1p(_observed_mean(windows(x, pos, 168), 84))[:, None]
        return side_by_side([day - level, week - level, day - mean])  # (n, horizons, 3)

    def kernel(g, pos, p, done):
        return done.shared(("profiles", target, horizons),
                           lambda: every_horizon(g, pos, done))[:, k]

    return FeatureBlock(columns, kernel, int(max(daily.max(), weekly.max(), 167)))


def _trend(target: str, width: int) -> FeatureBlock:
    """Least-squares slope of log1p(level) per hour over the last ``width`` hours."""
    steps = np.arange(width - 1, -1, -1, dtype=np.int64)
    x = -steps.astype(np.float64)
    # a window with every hour known: the hours' deviations and their sum of squares do not
    # depend on the values (computed once, as the masked path computes them)
    dx_all = x[None, :] - (x[None, :].sum(axis=1) / width)[:, None]
    sxx_all = (dx_all * dx_all).sum(axis=1)

    def kernel(g, pos, p, done):
        y = np.log1p(shifted(g.series[target], pos, steps))
        missing = np.isnan(y)
        if len(pos) == 1 and not missing.any():  # one window (online), all known: no masks
            if not sxx_all[0] > 0:
                return np.full(1, np.nan)
            dy = y - (y.sum(axis=1) / width)[:, None]
            return (dx_all * dy).sum(axis=1) / sxx_all
        known = ~missing
        count = known.sum(axis=1)
        xs = np.where(known, x[None, :], 0.0)
        ys = np.where(known, y, 0.0)
        n = np.maximum(count, 1)
        xm = xs.sum(axis=1) / n
        ym = ys.sum(axis=1) / n
        dx = np.where(known, x[None, :] - xm[:, None], 0.0)
        dy = np.where(known, y - ym[:, None], 0.0)
        sxx = (dx * dx).sum(axis=1)
        slope = (dx * dy).sum(axis=1) / np.where(sxx > 0, sxx, 1.0)
        return np.where((count >= width // 2) & (sxx > 0), slope, np.nan)

    return FeatureBlock((f"{target}_trend{width}",), kernel, width - 1)


def _anomalies(variable: str) -> FeatureBlock:
    """How unusual the level is now: log1p(value now) minus log1p of its usual level at this
    hour, over the last 7 days (same hour of day, >= 4 known), the last 4 weeks (same hour of
    week, >= 2 known) and the last 28 days (same hour of day, >= 14 known).

    An anomaly decays with time (a smoke episode ends, traffic comes back to normal), so it
    tells each horizon how much of the level now to carry forward.
    """
    daily = 24 * np.arange(1, 8, dtype=np.int64)
    weekly = 168 * np.arange(1, 5, dtype=np.int64)
    monthly = 24 * np.arange(1, 29, dtype=np.int64)
    columns = tuple(f"{variable}_anomaly_{name}" for name in ("daily", "weekly", "monthly"))

    def kernel(g, pos, p, done):
        x = _series(g, variable)
        now = np.log1p(x[pos])
        return side_by_side([
            now - np.log1p(_observed_mean(shifted(x, pos, daily), 4)),
            now - np.log1p(_observed_mean(shifted(x, pos, weekly), 2)),
            now - np.log1p(_observed_mean(shifted(x, pos, monthly), 14)),
        ])

    return FeatureBlock(columns, kernel, int(max(weekly.max(), monthly.max())))


def volatility_column(target: str) -> str:
    return f"{target}_vol24"


SPREAD_HOURS = 72  # the rolling window whose relative spread may scale long-horizon intervals


def spread_columns(target: str, width: int = SPREAD_HOURS) -> tuple[str, str]:
    """The rolling standard deviation and mean of ``target`` over ``width`` hours (present
    when ``features.rolling_windows`` holds ``width``): their ratio is the series' relative
    spread over the last days, which a long-horizon interval may scale by (``intervals.py``)."""
    return f"{target}_std{width}", f"{target}_mean{width}"


def _volatility(target: str) -> FeatureBlock:
    """Root mean square of the hourly changes of log1p(level) over the last 24 hours: how
    restless the series is now (it also scales the prediction interval, ``intervals.py``)."""
    steps = np.arange(24, -1, -1, dtype=np.int64)

    def kernel(g, pos, p, done):
        level = np.log1p(shifted(g.series[target], pos, steps))
        change = level[:, 1:] - level[:, :-1]  # np.diff's subtraction
        known = ~np.isnan(change)
        if len(pos) == 1 and known.all():  # one window (online), all known: no masks
            return np.sqrt((change * change).sum(axis=1) / change.shape[1])
        count = known.sum(axis=1)
        square = np.where(known, change * change, 0.0).sum(axis=1)
        return np.where(count >= 12, np.sqrt(square / np.maximum(count, 1)), np.nan)

    return FeatureBlock((volatility_column(target),), kernel, 24)


def _target_calendar(horizon: int) -> FeatureBlock:
    """The calendar (local hour and weekday) of the target hour ``t + h``."""
    names = ("hour_sin", "hour_cos", "dow_sin", "dow_cos", "is_weekend")

    def kernel(g, pos, p, done):
        return calendar(g.hours[pos] + horizon, p.timezone)[:, :5]

    return FeatureBlock(tuple(horizon_column(f"tt_{n}", horizon) for n in names), kernel)


def _forecast(horizon: int, variables: Sequence[str], horizons: Sequence[int]) -> FeatureBlock:
    """The weather forecast for the target hour from the newest run issued by the origin.

    Per variable its forecast value; the wind as a vector; the forecast precipitation summed
    over the hours up to the target hour (rain on the way washes out); and the lead time
    of the run used (older runs are less accurate). NaN without a run covering the hour.

    The blocks of all ``horizons`` share one computation per evaluation (every horizon's runs
    looked up at once, :meth:`Columns.shared`); each takes its own horizon's columns.
    """
    variables = tuple(variables)
    horizons = tuple(int(h) for h in horizons)
    k = horizons.index(horizon)
    wind = "wind_speed_10m" in variables and "wind_direction_10m" in variables
    rain = "precipitation" in variables
    names = [f"fc_{v}" for v in variables]
    names += ["fc_wind_u", "fc_wind_v"] if wind else []
    names += ["fc_precipitation_sum"] if rain else []
    names += ["fc_lead"]
    steps = np.asarray(horizons, dtype=np.int64)

    def every_horizon(g: HourlyGrid, pos: np.ndarray) -> np.ndarray:
        n, m = len(pos), len(horizons)
        out = np.full((n * m, len(names)), np.nan)  # (origin, horizon) rows, horizon fastest
        runs = g.forecasts
        if runs is None or not len(runs):
            return out.reshape(n, m, len(names))
        row, lead = runs.at(np.repeat(g.hours[pos], m), np.tile(steps, n))
        found = row >= 0
        every = bool(found.all())
        at = np.where(found, row, 0)  # (run 0, lead 0) where none: refilled with NaN below
        cube, index = runs.cube
        values = cube[:, at, lead]  # (variable, origin x horizon): one gather for all
        if not every:
            values[:, ~found] = np.nan
        out[:, :len(variables)] = values[[index[v] for v in variables]].T
        j = len(variables)
        if wind:
            speed = values[index["wind_speed_10m"]]
            rad = np.deg2rad(values[index["wind_direction_10m"]])
            out[:, j], out[:, j + 1] = -speed * np.sin(rad), -speed * np.cos(rad)
            j += 2
        if rain:  # each horizon sums its own first hours of one gather of the longest
            back = np.arange(max(horizons), dtype=np.int64)
            hours = runs.series["precipitation"][at[:, None],
                                                 np.maximum(lead[:, None] - back[None, :], 0)]
            known = ~np.isnan(hours)
            filled = np.where(known, hours, 0.0).reshape(n, m, len(back))
            known = known.reshape(n, m, len(back))
            by_horizon = out.reshape(n, m, len(names))
            for i, h in enumerate(horizons):
                by_horizon[:, i, j] = np.where(known[:, i, :h].any(axis=-1),
                                               filled[:, i, :h].sum(axis=-1), np.nan)
            if not every:
                out[~found, j] = np.nan
        out[:, -1] = np.where(found, lead, np.nan)
        return out.reshape(n, m, len(names))

    def one_origin(g: HourlyGrid, pos: np.ndarray) -> np.ndarray:
        """One origin (online): the runs do not change with the request's observations, so
        the values are kept per origin hour on the runs (read-only)."""
        memo = g.forecasts.memo if g.forecasts is not None else None
        if memo is None:
            return every_horizon(g, pos)
        key = (variables, horizons, int(g.hours[pos[0]]))
        found = memo.get(key)
        if found is None:
            if len(memo) >= 256:  # bounded: the newest hours are asked again and again
                memo.clear()
            found = memo[key] = every_horizon(g, pos)
            found.flags.writeable = False
        return found

    def kernel(g, pos, p, done):
        return done.shared(("forecast", variables, horizons),
                           lambda: one_origin(g, pos) if len(pos) == 1
                           else every_horizon(g, pos))[:, k]

    return FeatureBlock(tuple(horizon_column(n, horizon) for n in names), kernel)


@functools.lru_cache(maxsize=64)
def feature_blocks(spec: FeatureSpec) -> tuple[FeatureBlock, ...]:
    """Every model input, in column order."""
    cfg = spec.config
    blocks: list[FeatureBlock] = []
    for target in spec.targets:
        blocks.append(_value(target))
        if cfg.lags:
            blocks.append(_lags(target, cfg.lags))
        if cfg.rolling_windows:
            blocks.append(_rolling(target, cfg.rolling_windows))
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
    for name in dict.fromkeys(cfg.covariates):  # the user's own inputs, like co-pollutants
        blocks.append(_value(covariate_column(name)))
        if cfg.co_pollutant_lags:
            blocks.append(_lags(covariate_column(name), cfg.co_pollutant_lags))
    wind = "wind_speed_10m" in cfg.weather and "wind_direction_10m" in cfg.weather
    for var in dict.fromkeys(cfg.weather):
        blocks.append(_value(var))
        if cfg.weather_lags and not (wind and var in ("wind_speed_10m", "wind_direction_10m")):
            blocks.append(_lags(var, cfg.weather_lags))
    if wind:
        blocks.append(FeatureBlock(("wind_u", "wind_v"), _wind))
        if cfg.weather_lags:
            blocks.append(_wind_lags(cfg.weather_lags))
    if "precipitation" in cfg.weather:
        blocks.append(FeatureBlock(("precipitation_sum24",), _precipitation_sum24, 23))
    blocks.append(FeatureBlock(CALENDAR, _calendar))
    blocks.append(FeatureBlock(("location_code",), _location_code))
    blocks += [_volatility(target) for target in spec.targets]
    if cfg.trend:
        blocks += [_trend(target, 24) for target in spec.targets]
    if cfg.anomalies:
        blocks += [_anomalies(target) for target in spec.targets]
    # features of the target hour, one set per horizon (columns_for_horizon)
    forecast_weather = [v for v in WEATHER if v in cfg.forecast_weather]
    for horizon in spec.horizons:
        if cfg.profiles:
            blocks += [_profiles(target, horizon, spec.horizons) for target in spec.targets]
        if cfg.target_calendar:
            blocks.append(_target_calendar(horizon))
        if forecast_weather:
            blocks.append(_forecast(horizon, forecast_weather, spec.horizons))
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
             ) -> Columns:
    """Every block's columns at ``pos``, in order (each column read by name; the blocks'
    tables in ``tables``)."""
    blocks = blocks if isinstance(blocks, tuple) else tuple(blocks)
    layout = _layout_of(blocks)
    done = Columns(layout[1])
    gathered = _gather_one(layout[3], grid, int(pos[0])) if len(pos) == 1 else None
    for b, block in enumerate(blocks):
        if gathered is not None and block.gather is not None:
            done.tables.append(gathered[b])
            continue
        values = block.kernel(grid, pos, place, done)
        done.tables.append(values[:, None] if values.ndim == 1 else values)
    return done


@dataclass
class _Gathers:
    """Every ``gather`` block of a list as one gather: each value's variable and steps back,
    and each block's slice of the gathered row; the variables' rows in a grid's ``table``,
    kept per order of its series."""

    blocks: list[int]  # the positions of the gather blocks in the list
    variables: list[str]
    steps: np.ndarray
    slices: list[tuple[int, int]]
    rows: dict[tuple[str, ...], np.ndarray | None] = field(default_factory=dict)

    @classmethod
    def of(cls, blocks: tuple[FeatureBlock, ...]) -> _Gathers:
        chosen = [b for b, block in enumerate(blocks) if block.gather is not None]
        variables: list[str] = []
        steps: list[int] = []
        slices = []
        for block in (blocks[b] for b in chosen):
            var, back = block.gather
            if len(back) != len(block.columns):
                raise ValueError(f"block {block.columns[:2]} gathers {len(back)} values for "
                                 f"{len(block.columns)} columns")
            slices.append((len(steps), len(steps) + len(back)))
            variables += [var] * len(back)
            steps += back
        return cls(chosen, variables, np.asarray(steps, dtype=np.int64), slices)

    def rows_in(self, names: tuple[str, ...]) -> np.ndarray | None:
        """Each value's row in a table of series ``names`` (None: a variable is not there)."""
        if names not in self.rows:
            index = {name: i for i, name in enumerate(names)}
            self.rows[names] = (np.array([index[v] for v in self.variables], dtype=np.intp)
                                if all(v in index for v in self.variables) else None)
        return self.rows[names]


def _gather_one(plan: _Gathers, grid: HourlyGrid, position: int,
                ) -> dict[int, np.ndarray] | None:
    """The ``gather`` blocks' values at one position: one fancy index into the grid's table
    when it has one, holds every variable and every step stays on the grid; else value by
    value (NaN off the grid or for a variable the grid lacks). Each block gets its slice."""
    if not plan.blocks:
        return None
    source = position - plan.steps
    rows = plan.rows_in(tuple(grid.series)) if grid.table is not None else None
    if rows is not None and len(source) and source.min() >= 0 and source.max() < len(grid):
        values = grid.table[rows, source]
    else:
        n = len(grid)
        values = np.full(len(source), np.nan)
        for i, (var, at) in enumerate(zip(plan.variables, source.tolist(), strict=True)):
            series = grid.series.get(var)
            if series is not None and 0 <= at < n:
                values[i] = series[at]
    values = values[None, :]
    return {b: values[:, start:stop]
            for b, (start, stop) in zip(plan.blocks, plan.slices, strict=True)}


_LAYOUTS: dict[int, tuple[tuple[FeatureBlock, ...], dict[str, tuple[int, int]],
                           tuple[str, ...], _Gathers]] = {}


def _layout(blocks: tuple[FeatureBlock, ...]) -> dict[str, tuple[int, int]]:
    """Each column's (block, position in the block); a later block's column of the same
    name wins, as it did when the columns were stored one after the other."""
    return _layout_of(blocks)[1]


def _names(blocks: tuple[FeatureBlock, ...]) -> tuple[str, ...]:
    return _layout_of(blocks)[2]


def _layout_of(blocks: tuple[FeatureBlock, ...]):
    """Kept per tuple of blocks by identity (hashing 50 blocks per request costs more than the
    lookup it saves); ``feature_blocks`` hands out the same tuple for a spec."""
    found = _LAYOUTS.get(id(blocks))
    if found is None or found[0] is not blocks:
        if len(_LAYOUTS) >= 64:
            _LAYOUTS.clear()
        found = _LAYOUTS[id(blocks)] = (
            blocks, {column: (b, i) for b, block in enumerate(blocks)
                     for i, column in enumerate(block.columns)},
            tuple(c for block in blocks for c in block.columns), _Gathers.of(blocks))
    return found


# --- the two paths -------------------------------------------------------------------------


def build_features(
    frame: pd.DataFrame,
    spec: FeatureSpec,
    timezones: Mapping[str, str],
    location_codes: Mapping[str, int],
    with_labels: bool = True,
    forecasts: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Features (and optionally labels and baselines) for every location and hour (batch).

    ``frame`` holds validated canonical rows; each location is put on a regular hourly grid
    from its first to its last row, so that shifts are in hours, not rows. ``forecasts``
    (validated weather-forecast rows) feed the target-hour forecast features (NaN without).
    """
    blocks = feature_blocks(spec) + (label_blocks(spec) if with_labels else ())
    columns = [c for block in blocks for c in block.columns]
    parts: list[dict[str, np.ndarray]] = []
    ids: list[np.ndarray] = []
    hours: list[np.ndarray] = []
    for grid in hourly_grids(frame, forecasts):
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
    row = latest_row(grid, spec, timezone, code)
    return dict(zip(_names(feature_blocks(spec)), row.tolist(), strict=True))


def latest_row(grid: HourlyGrid, spec: FeatureSpec, timezone: str, code: float) -> np.ndarray:
    """:func:`latest_features` as one array in :func:`feature_names` order (read a column
    with :func:`row_positions`): the online path takes its model inputs from it by position."""
    if len(grid) == 0:
        raise ValueError(f"no history for location {grid.location_id!r}")
    done = evaluate(feature_blocks(spec), grid, np.array([len(grid) - 1]), Place(timezone, code))
    return np.concatenate(done.tables, axis=1, dtype=np.float64)[0]


def row_positions(spec: FeatureSpec, columns: Sequence[str]) -> np.ndarray:
    """Where each of ``columns`` is in :func:`latest_row` (a column two blocks compute: the
    later block's, as in :func:`latest_features`); KeyError for a column not built."""
    blocks = feature_blocks(spec)
    layout = _layout(blocks)
    starts = np.cumsum([0, *(len(block.columns) for block in blocks)])
    return np.array([starts[layout[c][0]] + layout[c][1] for c in columns], dtype=np.intp)


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
    if len(pos) == 1 and 0 <= pos[0] < len(x) and x[pos[0]] == x[pos[0]]:  # observed now
        return np.zeros(1)
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
    "ForecastGrid",
    "columns_for_horizon",
    "column_horizon",
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
    "latest_row",
    "location_codes",
    "persistence_column",
    "regular_grid",
    "row_positions",
    "seasonal_column",
]
