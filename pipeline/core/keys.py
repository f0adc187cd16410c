"""The key of one model: a target and a horizon, and its one serialised form.

Pure and light (no scikit-learn): the registry, reports and metric labels all use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple, TypeVar

import numpy as np

V = TypeVar("V")


class ModelKey(NamedTuple):
    """One model of a bundle: a target and a horizon (whole hours ahead).

    A key has one serialised form wherever it leaves Python: nested by target, then the
    horizon as its decimal number of hours, ``{"pm2_5": {"6": ...}}`` (the registry's
    artifact, the metadata's settings and calibrations, evaluation and backtest scores,
    reports/metrics.json), and the same two parts as metric labels
    (``target="pm2_5", horizon="6"``, :meth:`labels`). :func:`nest` and :func:`unnest` are
    the only conversions. A tuple ``(target, horizon)`` compares equal to its key.
    """

    target: str
    horizon: int

    @classmethod
    def of(cls, target: object, horizon: object) -> ModelKey:
        """A key from its parts as stored (the horizon as an int or its decimal hours)."""
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer, str)) or (
                isinstance(horizon, str) and not horizon.isdecimal()):
            raise ValueError(f"horizon {horizon!r} of {target!r}: whole hours expected "
                             "(an int, or its decimal digits in JSON)")
        return cls(str(target), int(horizon))

    @property
    def hours(self) -> str:
        """The horizon's serialised form: its decimal number of hours (``"6"``)."""
        return str(self.horizon)

    def labels(self) -> dict[str, str]:
        """Metric labels of the key."""
        return {"target": self.target, "horizon": self.hours}

    def __str__(self) -> str:  # for messages
        return f"{self.target} h={self.horizon}"


def nest(values: Mapping[tuple[str, int], V]) -> dict[str, dict[str, V]]:
    """``{key: value}`` as serialised: ``{target: {hours: value}}`` (keys in their order)."""
    out: dict[str, dict[str, V]] = {}
    for key, value in values.items():
        key = ModelKey.of(*key)
        out.setdefault(key.target, {})[key.hours] = value
    return out


def unnest(nested: Mapping[str, Mapping[str, V]]) -> dict[ModelKey, V]:
    """The inverse of :func:`nest`."""
    return {ModelKey.of(target, hours): value
            for target, by_hours in nested.items() for hours, value in by_hours.items()}


def keys_of(targets: Iterable[str], horizons: Iterable[int]) -> list[ModelKey]:
    """Every target x horizon, targets first (the order models are fitted and reported in)."""
    horizons = list(horizons)
    return [ModelKey.of(t, h) for t in targets for h in horizons]
