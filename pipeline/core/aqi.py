"""US EPA Air Quality Index from concentrations in the canonical units (ug/m3).

Breakpoints: EPA Technical Assistance Document (2024 PM2.5 update). EPA defines
O3 on 8-hour and CO on 8-hour averages; for hourly forecasts the 8-hour table
is applied to the hourly value, a documented approximation (docs/data.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.schema import ugm3_to_ppb

CATEGORIES = (
    "good",
    "moderate",
    "unhealthy_for_sensitive_groups",
    "unhealthy",
    "very_unhealthy",
    "hazardous",
)
_AQI_LOW = np.array([0, 51, 101, 151, 201, 301], dtype=float)
CATEGORY_UPPER_AQI = (50, 100, 150, 200, 300, 500)  # highest AQI of each category
_AQI_HIGH = np.array(CATEGORY_UPPER_AQI, dtype=float)

# (lower breakpoints, upper breakpoints) in the pollutant's EPA unit
_BREAKPOINTS = {
    "pm2_5": ([0.0, 9.1, 35.5, 55.5, 125.5, 225.5], [9.0, 35.4, 55.4, 125.4, 225.4, 325.4]),
    "pm10": ([0, 55, 155, 255, 355, 425], [54, 154, 254, 354, 424, 604]),
    "no2": ([0, 54, 101, 361, 650, 1250], [53, 100, 360, 649, 1249, 2049]),  # ppb
    "o3": ([0, 55, 71, 86, 106, 201], [54, 70, 85, 105, 200, 604]),  # ppb
    "so2": ([0, 36, 76, 186, 305, 605], [35, 75, 185, 304, 604, 1004]),  # ppb
    "co": ([0.0, 4.5, 9.5, 12.5, 15.5, 30.5], [4.4, 9.4, 12.4, 15.4, 30.4, 50.4]),  # ppm
}


# the same tables as float arrays, made once (converting them cost a few us per online call)
_TABLES = {p: (np.array(lows, dtype=float), np.array(highs, dtype=float))
           for p, (lows, highs) in _BREAKPOINTS.items()}
for _table in _TABLES.values():
    for _array in _table:
        _array.setflags(write=False)

# EPA truncates concentrations before the lookup: PM2.5 and CO to 0.1, the rest to integers
_DECIMALS = {"pm2_5": 1, "pm10": 0, "no2": 0, "o3": 0, "so2": 0, "co": 1}


def _epa_units(pollutant: str, values: np.ndarray) -> np.ndarray:
    if pollutant in ("no2", "o3", "so2"):
        return ugm3_to_ppb(values, pollutant)
    if pollutant == "co":
        return ugm3_to_ppb(values, "co") / 1000.0
    return values


def aqi(pollutant: str, values) -> np.ndarray:
    """US AQI (0-500, NaN for NaN input) of concentrations in ug/m3."""
    if pollutant not in _BREAKPOINTS:
        raise ValueError(f"no AQI breakpoints for {pollutant!r}")
    conc = np.maximum(_epa_units(pollutant, np.asarray(values, dtype=float)), 0)
    scale = 10.0 ** _DECIMALS[pollutant]
    conc = np.floor(conc * scale + 1e-6) / scale
    lows, highs = _TABLES[pollutant]
    idx = np.searchsorted(highs, conc, side="left")
    idx = np.minimum(idx, len(highs) - 1)
    c_lo, c_hi = lows[idx], highs[idx]
    i_lo, i_hi = _AQI_LOW[idx], _AQI_HIGH[idx]
    conc = np.minimum(conc, c_hi)
    value = (i_hi - i_lo) / (c_hi - c_lo) * (conc - c_lo) + i_lo
    return np.where(np.isnan(conc), np.nan, np.floor(value + 0.5))


_NAMES = np.array([*CATEGORIES, "unknown"], dtype=object)


def index_category(index) -> np.ndarray:
    """0 (good) .. 5 (hazardous) of AQI values; -1 for NaN."""
    index = np.asarray(index, dtype=float)
    cats = np.searchsorted(_AQI_HIGH, index, side="left").astype(float)
    return np.where(np.isnan(index), -1, np.minimum(cats, 5)).astype(int)


def category_names(index) -> np.ndarray:
    """The category name of each AQI value (``unknown`` for NaN): the one mapping."""
    return _NAMES[index_category(index)]


def category_index(pollutant: str, values) -> np.ndarray:
    """0 (good) .. 5 (hazardous) of concentrations; -1 for NaN."""
    return index_category(aqi(pollutant, values))


def category(pollutant: str, values) -> pd.Series:
    return pd.Series(category_names(aqi(pollutant, values)), dtype="object")


def category_thresholds(pollutant: str) -> dict[str, float]:
    """Concentration (ug/m3) from which each category above ``good`` starts.

    EPA truncates before the lookup (PM2.5 9.1 is moderate, 9.09 is good), so the
    lower breakpoint of a category is where a value reaches it.
    """
    if pollutant not in _BREAKPOINTS:
        raise ValueError(f"no AQI breakpoints for {pollutant!r}")
    lows = np.asarray(_BREAKPOINTS[pollutant][0], dtype=float)[1:]
    if pollutant in ("no2", "o3", "so2"):
        lows = lows / ugm3_to_ppb(1.0, pollutant)
    elif pollutant == "co":
        lows = lows * 1000.0 / ugm3_to_ppb(1.0, "co")
    return {name: float(low) for name, low in zip(CATEGORIES[1:], lows, strict=True)}
