"""Unit spellings providers use, converted to the canonical units of :mod:`pipeline.schema`.

Every source sends its values through :func:`to_canonical`, so an unknown or
impossible unit (ppb for particulate matter, km/h for humidity) stops the
import with a message naming the variable and the unit instead of storing
numbers on the wrong scale.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.schema import MOLECULAR_WEIGHT, POLLUTANTS, VARIABLES, ppb_to_ugm3


class UnitError(ValueError):
    """A unit that is unknown or makes no sense for the variable."""


def _norm(unit: str) -> str:
    """Fold the many spellings (µ/μ, ³/3, degree signs, case, spaces) into one key."""
    text = str(unit).strip().lower()
    for old, new in (
        ("μ", "u"), ("µ", "u"), ("³", "3"), ("²", "2"), ("°", "deg"), ("º", "deg"),
        (" ", ""), ("**", ""), ("^", ""),
    ):
        text = text.replace(old, new)
    return text


def _scale(factor: float):
    return lambda values, _var: values * factor


_IDENTITY = _scale(1.0)

# canonical unit -> {normalised spelling: converter(values, variable)}
_MASS_CONCENTRATION = {
    "ug/m3": _IDENTITY,
    "microgram/m3": _IDENTITY,
    "microgramsm3": _IDENTITY,
    "mg/m3": _scale(1000.0),
    "ng/m3": _scale(0.001),
}
_MIXING_RATIO = {
    "ppb": lambda values, var: ppb_to_ugm3(values, var),
    "ppm": lambda values, var: ppb_to_ugm3(values * 1000.0, var),
    "ppt": lambda values, var: ppb_to_ugm3(values / 1000.0, var),
}
_BY_CANONICAL = {
    "degC": {
        "degc": _IDENTITY,
        "c": _IDENTITY,
        "celsius": _IDENTITY,
        "degf": lambda v, _: (v - 32.0) * 5.0 / 9.0,
        "f": lambda v, _: (v - 32.0) * 5.0 / 9.0,
        "fahrenheit": lambda v, _: (v - 32.0) * 5.0 / 9.0,
        "k": lambda v, _: v - 273.15,
        "kelvin": lambda v, _: v - 273.15,
    },
    "%": {"%": _IDENTITY, "percent": _IDENTITY, "fraction": _scale(100.0)},
    "m/s": {
        "m/s": _IDENTITY,
        "ms": _IDENTITY,
        "ms-1": _IDENTITY,
        "km/h": _scale(1 / 3.6),
        "kmh": _scale(1 / 3.6),
        "kph": _scale(1 / 3.6),
        "mph": _scale(0.44704),
        "kn": _scale(0.514444),
        "kt": _scale(0.514444),
        "knots": _scale(0.514444),
    },
    "deg": {"deg": _IDENTITY, "degrees": _IDENTITY, "degree": _IDENTITY},
    "hPa": {
        "hpa": _IDENTITY,
        "mbar": _IDENTITY,
        "mb": _IDENTITY,
        "pa": _scale(0.01),
        "kpa": _scale(10.0),
        "inhg": _scale(33.8639),
    },
    "mm": {
        "mm": _IDENTITY,
        "cm": _scale(10.0),
        "inch": _scale(25.4),
        "in": _scale(25.4),
        "inches": _scale(25.4),
    },
    "ug/m3": _MASS_CONCENTRATION,
}


def known_units(variable: str) -> list[str]:
    """Spellings accepted for a canonical variable (normalised form)."""
    canonical = VARIABLES[variable].unit
    units = list(_BY_CANONICAL[canonical])
    if variable in MOLECULAR_WEIGHT:
        units += list(_MIXING_RATIO)
    return units


def check_unit(variable: str, unit: str) -> None:
    """Raise UnitError unless ``unit`` can be converted for ``variable``."""
    _converter(variable, unit)


def _converter(variable: str, unit: str):
    if variable not in VARIABLES:
        raise UnitError(f"unknown variable {variable!r}; canonical variables are {list(VARIABLES)}")
    if unit is None or str(unit).strip() == "":
        raise UnitError(f"{variable}: no unit given")
    key = _norm(unit)
    table = _BY_CANONICAL[VARIABLES[variable].unit]
    if key in table:
        return table[key]
    if key in _MIXING_RATIO:
        if variable in MOLECULAR_WEIGHT:
            return _MIXING_RATIO[key]
        if variable in POLLUTANTS:
            raise UnitError(
                f"{variable}: unit {unit!r} is a gas mixing ratio; particulate matter needs a "
                "mass concentration (ug/m3, mg/m3)"
            )
    raise UnitError(
        f"{variable}: unknown unit {unit!r} (canonical {VARIABLES[variable].unit}; "
        f"accepted: {', '.join(known_units(variable))})"
    )


def to_canonical(variable: str, values, unit: str) -> np.ndarray:
    """Values of ``variable`` in ``unit`` as float64 in the canonical unit; NaN stays NaN."""
    convert = _converter(variable, unit)
    array = np.asarray(values, dtype="float64")
    return np.asarray(convert(array, variable), dtype="float64")


# ---------------------------------------------------------------- wind given as categories


def hourly_from_cumulated(cumulated, category, hour, group, previous=None
                          ) -> tuple[np.ndarray, dict]:
    """Hourly values of a quantity cumulated since its category last changed.

    Beijing's ``Iws`` sums the hourly wind speeds since the wind direction category
    (``cbwd``) last changed: the hourly speed is the difference to the previous hour when the
    category stayed, and the value itself when it changed (the sum restarts). Where neither
    can be told, the hourly value is NaN, never guessed: the first row of a group, a row after
    a missing hour, a missing category or value, a sum that decreased without a change.

    Arrays are in file order, one row per (group, hour); ``hour`` is in whole hours (int64,
    any origin). ``previous`` maps a group to its last (hour, category, cumulated) of an
    earlier part of the same file. Returns the hourly values and the updated ``previous``.
    Raises ValueError naming the first group whose hours do not increase.
    """
    values = np.asarray(cumulated, dtype="float64")
    hours = np.asarray(hour, dtype="int64")
    cats = np.asarray(pd.Series(category, dtype="object").where(pd.notna(category), None))
    groups = pd.Series(np.asarray(group, dtype="object"))
    previous = dict(previous or {})
    n = len(values)
    prev_hour = np.full(n, np.iinfo("int64").min, dtype="int64")
    prev_cat = np.full(n, None, dtype="object")
    prev_value = np.full(n, np.nan)
    first_of_group = ~groups.duplicated(keep="first").to_numpy() if n else np.zeros(0, bool)
    order = groups.groupby(groups, sort=False).cumcount().to_numpy() if n else np.zeros(0, int)
    # the previous row of the same group in this part (file order)
    shifted = pd.DataFrame({"g": groups, "h": hours, "c": cats, "v": values})
    lagged = shifted.groupby("g", sort=False)[["h", "c", "v"]].shift(1)
    inside = order > 0
    prev_hour[inside] = lagged["h"].to_numpy()[inside].astype("int64")
    prev_cat[inside] = lagged["c"].to_numpy()[inside]
    prev_value[inside] = lagged["v"].to_numpy(dtype="float64")[inside]
    for i in np.flatnonzero(first_of_group):  # the previous row from an earlier part
        last = previous.get(groups.iat[i])
        if last is not None:
            prev_hour[i], prev_cat[i], prev_value[i] = last
    known = prev_hour != np.iinfo("int64").min
    backwards = known & (hours <= prev_hour)
    if backwards.any():
        i = int(np.flatnonzero(backwards)[0])
        raise ValueError(f"rows of {groups.iat[i]!r} are not in time order ({int(backwards.sum())}"
                         f" row(s) at or before the row above them)")
    follows = known & (hours == prev_hour + 1)
    have = ~np.isnan(values) & (values >= 0) & pd.notna(cats)
    both = follows & have & pd.notna(prev_cat) & ~np.isnan(prev_value)
    same = both & (cats == prev_cat)
    changed = both & (cats != prev_cat)
    hourly = np.full(n, np.nan)
    hourly[changed] = values[changed]
    step = values - prev_value
    ok = same & (step >= 0)
    hourly[ok] = step[ok]
    for i in np.flatnonzero(~groups.duplicated(keep="last").to_numpy()) if n else ():
        previous[groups.iat[i]] = (int(hours[i]), cats[i], float(values[i]))
    return hourly, previous


def compass_degrees(categories, directions: dict[str, float | None]) -> tuple[np.ndarray, list]:
    """Degrees (where the wind blows from) of compass categories; NaN for a category mapped to
    None (calm, variable) and for a missing one. Also returns the categories not in
    ``directions`` (the caller refuses them)."""
    text = pd.Series(categories, dtype="object")
    present = text.notna()
    stripped = text[present].astype(str).str.strip()
    unknown = sorted(set(stripped) - set(directions))
    table = {k: (np.nan if v is None else float(v)) for k, v in directions.items()}
    degrees = np.full(len(text), np.nan)
    degrees[present.to_numpy()] = stripped.map(table).to_numpy(dtype="float64")
    return degrees, unknown
