"""The canonical hourly schema every source produces: one row per (location_id, UTC hour).

Units are fixed here and documented in ``docs/data.md``; sources convert to them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

KEYS = ("location_id", "time")
TIME_DTYPE = "datetime64[us, UTC]"


@dataclass(frozen=True)
class Variable:
    name: str
    unit: str
    low: float
    high: float
    description: str


WEATHER_VARIABLES = (
    Variable("temperature_2m", "degC", -90, 60, "air temperature at 2 m"),
    Variable("relative_humidity_2m", "%", 0, 100, "relative humidity at 2 m"),
    Variable("wind_speed_10m", "m/s", 0, 120, "wind speed at 10 m"),
    Variable("wind_direction_10m", "deg", 0, 360, "direction the wind blows from, at 10 m"),
    Variable("surface_pressure", "hPa", 300, 1100, "pressure at the surface"),
    Variable("precipitation", "mm", 0, 500, "precipitation in the preceding hour"),
    Variable("cloud_cover", "%", 0, 100, "total cloud cover"),
)
POLLUTANT_VARIABLES = (
    Variable("pm2_5", "ug/m3", 0, 1500, "particulate matter < 2.5 um"),
    Variable("pm10", "ug/m3", 0, 5000, "particulate matter < 10 um"),
    Variable("no2", "ug/m3", 0, 2000, "nitrogen dioxide"),
    Variable("o3", "ug/m3", 0, 1000, "ozone"),
    Variable("so2", "ug/m3", 0, 5000, "sulphur dioxide"),
    Variable("co", "ug/m3", 0, 100000, "carbon monoxide"),
)
VARIABLES = {v.name: v for v in WEATHER_VARIABLES + POLLUTANT_VARIABLES}
WEATHER = tuple(v.name for v in WEATHER_VARIABLES)
POLLUTANTS = tuple(v.name for v in POLLUTANT_VARIABLES)
VALUE_COLUMNS = WEATHER + POLLUTANTS
COLUMNS = KEYS + VALUE_COLUMNS

# Molecular weights, for ppb <-> ug/m3 at 25 degC and 1 atm (molar volume 24.45 l).
MOLECULAR_WEIGHT = {"no2": 46.0055, "o3": 47.9982, "so2": 64.066, "co": 28.010}
MOLAR_VOLUME_L = 24.45


# Extra numeric covariates a user brings in (a CSV column under a name of their choosing,
# ``source.csv.mapping.covariates``) are stored and used as ``cov_<name>`` columns after the
# canonical ones: no canonical column or generated feature starts with the prefix.
COVARIATE_PREFIX = "cov_"
COVARIATE_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
MAX_COVARIATE_NAME = 40


def covariate_column(name: str) -> str:
    return f"{COVARIATE_PREFIX}{name}"


def covariate_columns(columns) -> list[str]:
    """The covariate columns among ``columns``, sorted (their stored order)."""
    return sorted(c for c in columns if isinstance(c, str) and c.startswith(COVARIATE_PREFIX)
                  and COVARIATE_NAME.match(c[len(COVARIATE_PREFIX):]))


class SchemaError(ValueError):
    """A frame cannot be brought to the canonical schema at all (not a row-level problem)."""


def empty_frame() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in VALUE_COLUMNS})
    frame.insert(0, "time", pd.Series(dtype=TIME_DTYPE))
    frame.insert(0, "location_id", pd.Series(dtype=str))
    return frame


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns in canonical order and dtype; variables a source lacks become NaN.

    Covariate columns (``cov_<name>``) follow the canonical ones, sorted, as float64.
    Raises SchemaError for missing keys or unknown columns, which are programming
    or mapping errors, not bad rows.
    """
    missing_keys = [k for k in KEYS if k not in frame.columns]
    if missing_keys:
        raise SchemaError(f"missing key column(s) {missing_keys}")
    covariates = covariate_columns(frame.columns)
    unknown = sorted(set(frame.columns) - set(COLUMNS) - set(covariates))
    if unknown:
        raise SchemaError(f"unknown column(s) {unknown}; canonical columns are {list(COLUMNS)}")
    out = pd.DataFrame(index=frame.index)
    # the default string dtype of the installed pandas (object in 2.x, str in 3.x)
    out["location_id"] = frame["location_id"].astype(str)
    time = frame["time"]
    if not isinstance(time.dtype, pd.DatetimeTZDtype):
        raise SchemaError(f"column 'time' must be timezone-aware UTC, got dtype {time.dtype}")
    out["time"] = time.dt.tz_convert("UTC").astype(TIME_DTYPE)
    for col in VALUE_COLUMNS:
        if col in frame.columns:
            out[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        else:
            out[col] = np.nan
    for col in covariates:
        out[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    return out.reset_index(drop=True)


# Weather forecasts: one row per (location_id, issue_time, time); ``issue_time`` is the UTC hour
# the forecast was known (nothing issued later may be used at an origin), ``time`` the hour it
# is valid for; the weather variables in the units above.
FORECAST_KEYS = ("location_id", "issue_time", "time")
FORECAST_COLUMNS = FORECAST_KEYS + WEATHER
MAX_FORECAST_LEAD_H = 16 * 24  # the longest lead any provider gives (Open-Meteo: 16 days)


def empty_forecasts() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in WEATHER})
    frame.insert(0, "time", pd.Series(dtype=TIME_DTYPE))
    frame.insert(0, "issue_time", pd.Series(dtype=TIME_DTYPE))
    frame.insert(0, "location_id", pd.Series(dtype=str))
    return frame


def conform_forecasts(frame: pd.DataFrame) -> pd.DataFrame:
    """A weather-forecast frame in canonical column order and dtypes (like :func:`conform`)."""
    missing = [k for k in FORECAST_KEYS if k not in frame.columns]
    if missing:
        raise SchemaError(f"forecasts: missing key column(s) {missing}")
    unknown = sorted(set(frame.columns) - set(FORECAST_COLUMNS))
    if unknown:
        raise SchemaError(f"forecasts: unknown column(s) {unknown}; forecast columns are "
                          f"{list(FORECAST_COLUMNS)}")
    out = pd.DataFrame(index=frame.index)
    out["location_id"] = frame["location_id"].astype(str)
    for key in ("issue_time", "time"):
        if not isinstance(frame[key].dtype, pd.DatetimeTZDtype):
            raise SchemaError(f"forecasts: column {key!r} must be timezone-aware UTC, got "
                              f"dtype {frame[key].dtype}")
        out[key] = frame[key].dt.tz_convert("UTC").astype(TIME_DTYPE)
    for col in WEATHER:
        if col in frame.columns:
            out[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        else:
            out[col] = np.nan
    return out.reset_index(drop=True)


def ppb_to_ugm3(values: pd.Series | np.ndarray | float, gas: str):
    """Convert a gas mixing ratio in ppb to ug/m3 (25 degC, 1 atm)."""
    return values * MOLECULAR_WEIGHT[gas] / MOLAR_VOLUME_L


def ugm3_to_ppb(values: pd.Series | np.ndarray | float, gas: str):
    return values * MOLAR_VOLUME_L / MOLECULAR_WEIGHT[gas]
