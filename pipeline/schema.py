"""The canonical hourly schema every source produces: one row per (location_id, UTC hour).

Units are fixed here and documented in ``docs/data.md``; sources convert to them.
"""

from __future__ import annotations

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


class SchemaError(ValueError):
    """A frame cannot be brought to the canonical schema at all (not a row-level problem)."""


def empty_frame() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in VALUE_COLUMNS})
    frame.insert(0, "time", pd.Series(dtype=TIME_DTYPE))
    frame.insert(0, "location_id", pd.Series(dtype=str))
    return frame


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns in canonical order and dtype; variables a source lacks become NaN.

    Raises SchemaError for missing keys or unknown columns, which are programming
    or mapping errors, not bad rows.
    """
    missing_keys = [k for k in KEYS if k not in frame.columns]
    if missing_keys:
        raise SchemaError(f"missing key column(s) {missing_keys}")
    unknown = sorted(set(frame.columns) - set(COLUMNS))
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
    return out.reset_index(drop=True)


def ppb_to_ugm3(values: pd.Series | np.ndarray | float, gas: str):
    """Convert a gas mixing ratio in ppb to ug/m3 (25 degC, 1 atm)."""
    return values * MOLECULAR_WEIGHT[gas] / MOLAR_VOLUME_L


def ugm3_to_ppb(values: pd.Series | np.ndarray | float, gas: str):
    return values * MOLAR_VOLUME_L / MOLECULAR_WEIGHT[gas]
