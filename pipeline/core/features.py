"""Feature engineering: vectorised per location, strictly causal.

Every feature at issue time ``t`` uses data at or before ``t`` only; labels
``y__<target>__h<h>`` hold the value at ``t + h`` and are never features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.config import FeatureConfig
from pipeline.schema import KEYS, POLLUTANTS, VALUE_COLUMNS

LABEL_PREFIX = "y__"
PERSISTENCE_PREFIX = "base_persistence__"
SEASONAL_PREFIX = "base_seasonal__"


def label_column(target: str, horizon: int) -> str:
    return f"{LABEL_PREFIX}{target}__h{horizon}"


def seasonal_column(target: str, horizon: int) -> str:
    return f"{SEASONAL_PREFIX}{target}__h{horizon}"


def persistence_column(target: str) -> str:
    return f"{PERSISTENCE_PREFIX}{target}"


@dataclass(frozen=True)
class FeatureSpec:
    """What the features of a model were built from (stored with the model)."""

    targets: tuple[str, ...]
    horizons: tuple[int, ...]
    config: FeatureConfig

    @property
    def warmup_hours(self) -> int:
        """History needed before the first complete feature row."""
        longest = max([*self.config.lags, *self.config.rolling_windows,
                       *self.config.co_pollutant_lags, 24])
        return int(longest) + 1


def anchor(columns: Mapping[str, pd.Series], target: str) -> pd.Series:
    """The latest known level of a target at issue time: now, else an hour ago, else a day mean.

    Models forecast relative to it, so a level never seen in training still gets a forecast.
    """
    level = columns[target]
    for fallback in (f"{target}_lag1", f"{target}_mean24", f"{target}_mean72"):
        if fallback in columns:
            level = level.fillna(columns[fallback])
    return level.clip(lower=0)


def anchor_column(target: str) -> str:
    return f"{target}_log"


def regular_grid(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per location and hour between its first and last observation; gaps are NaN."""
    pieces = []
    for location_id, part in frame.groupby("location_id", sort=True):
        part = part.set_index("time").sort_index()
        hours = pd.date_range(part.index.min(), part.index.max(), freq="h", name="time")
        grid = part[list(VALUE_COLUMNS)].reindex(hours)
        grid.insert(0, "location_id", location_id)
        pieces.append(grid.reset_index())
    if not pieces:
        return frame.iloc[0:0][list(KEYS) + list(VALUE_COLUMNS)]
    return pd.concat(pieces, ignore_index=True)[list(KEYS) + list(VALUE_COLUMNS)]


def _calendar(times: pd.Series, location_ids: pd.Series,
              timezones: Mapping[str, str]) -> pd.DataFrame:
    local_hour = np.empty(len(times))
    local_dow = np.empty(len(times))
    for location_id, tz in timezones.items():
        mask = (location_ids == location_id).to_numpy()
        if mask.any():
            local = times[mask].dt.tz_convert(tz)
            local_hour[mask] = local.dt.hour.to_numpy()
            local_dow[mask] = local.dt.day_of_week.to_numpy()
    doy = times.dt.day_of_year.to_numpy()
    return pd.DataFrame(
        {
            "hour_sin": np.sin(2 * np.pi * local_hour / 24),
            "hour_cos": np.cos(2 * np.pi * local_hour / 24),
            "dow_sin": np.sin(2 * np.pi * local_dow / 7),
            "dow_cos": np.cos(2 * np.pi * local_dow / 7),
            "is_weekend": (local_dow >= 5).astype(float),
            "doy_sin": np.sin(2 * np.pi * doy / 365.25),
            "doy_cos": np.cos(2 * np.pi * doy / 365.25),
        },
        index=times.index,
    )


def build_features(
    frame: pd.DataFrame,
    spec: FeatureSpec,
    timezones: Mapping[str, str],
    location_codes: Mapping[str, int],
    with_labels: bool = True,
) -> pd.DataFrame:
    """Features (and optionally labels and baselines) for every location and hour.

    ``frame`` holds validated canonical rows; it is put on a regular hourly grid
    per location first so that shifts are in hours, not rows.
    """
    grid = regular_grid(frame)
    if grid.empty:
        return grid
    by_loc = grid.groupby("location_id", sort=False)
    cfg = spec.config
    cols: dict[str, pd.Series | np.ndarray] = {}

    for target in spec.targets:
        y = grid[target]
        cols[target] = y
        for lag in cfg.lags:
            cols[f"{target}_lag{lag}"] = by_loc[target].shift(lag)
        for window in cfg.rolling_windows:
            roll = by_loc[target].rolling(window, min_periods=max(1, window // 2))
            cols[f"{target}_mean{window}"] = roll.mean().reset_index(level=0, drop=True)
            cols[f"{target}_std{window}"] = roll.std().reset_index(level=0, drop=True)
        cols[f"{target}_diff1"] = by_loc[target].diff(1)
        cols[f"{target}_diff24"] = by_loc[target].diff(24)
        # scale-free views: the same shape of a series means the same thing at 10 or 300 ug/m3
        log_now = np.log1p(anchor(cols, target))
        cols[f"{target}_log"] = log_now
        for lag in cfg.lags:
            cols[f"{target}_rel_lag{lag}"] = np.log1p(cols[f"{target}_lag{lag}"]) - log_now
        for window in cfg.rolling_windows:
            cols[f"{target}_rel_mean{window}"] = np.log1p(cols[f"{target}_mean{window}"]) - log_now

    for pollutant in cfg.co_pollutants:
        if pollutant in spec.targets:
            continue
        cols[pollutant] = grid[pollutant]
        for lag in cfg.co_pollutant_lags:
            cols[f"{pollutant}_lag{lag}"] = by_loc[pollutant].shift(lag)

    for var in cfg.weather:
        cols[var] = grid[var]
    if "wind_speed_10m" in cfg.weather and "wind_direction_10m" in cfg.weather:
        rad = np.deg2rad(grid["wind_direction_10m"])
        # direction the wind comes from -> vector components of the flow
        cols["wind_u"] = -grid["wind_speed_10m"] * np.sin(rad)
        cols["wind_v"] = -grid["wind_speed_10m"] * np.cos(rad)
    if "precipitation" in cfg.weather:
        cols["precipitation_sum24"] = (
            by_loc["precipitation"].rolling(24, min_periods=1).sum()
            .reset_index(level=0, drop=True)
        )

    features = pd.DataFrame(cols, index=grid.index)
    features = pd.concat([features, _calendar(grid["time"], grid["location_id"], timezones)],
                         axis=1)
    features["location_code"] = grid["location_id"].map(location_codes).astype("float64")

    out = pd.concat([grid[list(KEYS)], features], axis=1)
    if with_labels:
        extra = {}
        for target in spec.targets:
            extra[persistence_column(target)] = grid[target]
            for horizon in spec.horizons:
                extra[label_column(target, horizon)] = by_loc[target].shift(-horizon)
                # seasonal naive: the same hour of the last day known at issue time
                back = 24 * int(np.ceil(horizon / 24)) - horizon
                extra[seasonal_column(target, horizon)] = by_loc[target].shift(back)
        out = pd.concat([out, pd.DataFrame(extra, index=grid.index)], axis=1)
    return out


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The model inputs: everything but keys, labels and baselines."""
    skip = (LABEL_PREFIX, PERSISTENCE_PREFIX, SEASONAL_PREFIX)
    return [c for c in frame.columns if c not in KEYS and not c.startswith(skip)]


def location_codes(location_ids: Sequence[str]) -> dict[str, int]:
    """Stable integer codes for the location categorical feature (sorted ids)."""
    return {loc: i for i, loc in enumerate(sorted(location_ids))}


__all__ = [
    "FeatureSpec",
    "POLLUTANTS",
    "build_features",
    "feature_columns",
    "label_column",
    "location_codes",
    "persistence_column",
    "regular_grid",
    "seasonal_column",
]
