"""Unit spellings providers use, converted to the canonical units of :mod:`pipeline.schema`.

Every source sends its values through :func:`to_canonical`, so an unknown or
impossible unit (ppb for particulate matter, km/h for humidity) stops the
import with a message naming the variable and the unit instead of storing
numbers on the wrong scale.
"""

from __future__ import annotations

import numpy as np

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
