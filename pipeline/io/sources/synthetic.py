"""The offline default source: deterministic synthetic weather and air quality.

Rows depend only on (seed, location, hour), never on the requested window, so
backfills and incremental runs agree exactly. The model is in
:mod:`pipeline.core.synthetic` and described in ``docs/data.md``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.core.synthetic import (
    HOUR_NS,
    Drift,
    Simulation,
    forecast_window_end,
    generate,
    generate_forecasts,
    simulate,
)
from pipeline.io.sources.base import FetchResult, SourceError
from pipeline.schema import (
    TIME_DTYPE,
    WEATHER,
    conform,
    conform_forecasts,
    empty_forecasts,
    empty_frame,
)
from pipeline.timeutil import utc

if TYPE_CHECKING:
    from pipeline.config import Location
    from pipeline.config import SyntheticSource as SyntheticConfig


def hour_index(ts: pd.Timestamp, ceil: bool) -> int:
    """Whole UTC hours since 1970-01-01 (rounded up for a window start)."""
    ns = utc(ts).as_unit("ns").value
    return -(-ns // HOUR_NS) if ceil else ns // HOUR_NS


def _start_hour(day: dt.date) -> int:
    return hour_index(pd.Timestamp(day), ceil=True)


def drifts_from_config(config: SyntheticConfig) -> list[Drift]:
    """Drift scenarios as the generator needs them; refuses ones that make no sense."""
    drifts = []
    for i, scenario in enumerate(config.scenarios):
        if scenario.kind == "emission_shift" and scenario.variable in WEATHER:
            raise SourceError(
                f"source.synthetic.scenarios.{i}: emission_shift needs a pollutant, not "
                f"{scenario.variable!r} (nothing is emitted); use sensor_recalibration to "
                f"shift a weather sensor"
            )
        drifts.append(
            Drift(
                kind=scenario.kind,
                start_hour=_start_hour(scenario.start),
                variable=scenario.variable,
                factor=float(scenario.factor),
                locations=frozenset(scenario.locations) if scenario.locations else None,
            )
        )
    return drifts


# simulations one fetch keeps for the forecasts of the same window: ~250 kB per location for
# a month's chunk, so at most ~12 MB; the locations beyond are simulated again (a fetch in
# one process may hold every location of a chunk: 500 places would have kept ~124 MB)
MAX_KEPT_SIMULATIONS = 50


class SyntheticSource:
    """Canonical rows for every location and UTC hour in [start, end), from a seed."""

    name = "synthetic"
    cpu_bound = True  # computed here, no provider: ingestion may spread it over processes

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self.drifts = drifts_from_config(config)
        # the last fetch's simulations (up to MAX_KEPT_SIMULATIONS), kept for the forecasts of
        # the same window (ingestion asks for both products of a chunk in turn): the world is
        # simulated once, not twice
        self._simulations: dict[tuple[str, int, int], Simulation] = {}

    def fetch(
        self, locations: Sequence[Location], start: pd.Timestamp, end: pd.Timestamp
    ) -> FetchResult:
        first, stop = hour_index(start, ceil=True), hour_index(end, ceil=True)
        if stop <= first or not locations:
            return FetchResult(frame=empty_frame())
        hours = np.arange(first, stop, dtype=np.int64)
        times = pd.DatetimeIndex(pd.to_datetime(hours * HOUR_NS, utc=True)).astype(TIME_DTYPE)
        parts = []
        self._simulations = {}
        reach = forecast_window_end(first, stop)
        for loc in locations:
            simulation = simulate(loc.id, loc.latitude, loc.longitude, loc.timezone, first,
                                  reach, seed=self.config.seed, drifts=self.drifts)
            if len(self._simulations) < MAX_KEPT_SIMULATIONS:
                self._simulations[(loc.id, first, stop)] = simulation
            values = generate(
                loc.id, loc.latitude, loc.longitude, loc.timezone, first, stop,
                seed=self.config.seed, gap_rate=self.config.gap_rate,
                spike_rate=self.config.spike_rate, drifts=self.drifts, simulation=simulation,
            )
            part = pd.DataFrame(values)
            part.insert(0, "time", times)
            part.insert(0, "location_id", loc.id)
            parts.append(part)
        frame = conform(pd.concat(parts, ignore_index=True))
        return FetchResult(frame=frame)  # no requests made: stats stay empty

    def fetch_forecasts(
        self, locations: Sequence[Location], start: pd.Timestamp, end: pd.Timestamp
    ) -> FetchResult:
        """Weather forecasts of the runs issued in [start, end): every 6 hours, 48 hours ahead,
        their error growing with the lead (``pipeline.core.synthetic.generate_forecasts``)."""
        first, stop = hour_index(start, ceil=True), hour_index(end, ceil=True)
        if stop <= first or not locations:
            return FetchResult(frame=empty_forecasts())
        parts = []
        simulations, self._simulations = self._simulations, {}
        for loc in locations:
            values = generate_forecasts(loc.id, loc.latitude, loc.longitude, loc.timezone,
                                        first, stop, seed=self.config.seed,
                                        simulation=simulations.get((loc.id, first, stop)))
            part = pd.DataFrame({name: values[name] for name in WEATHER})
            part.insert(0, "time", _times(values["time"]))
            part.insert(0, "issue_time", _times(values["issue"]))
            part.insert(0, "location_id", loc.id)
            parts.append(part)
        return FetchResult(frame=conform_forecasts(pd.concat(parts, ignore_index=True)))


def _times(hours: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(np.asarray(hours, dtype=np.int64) * HOUR_NS,
                                           utc=True)).astype(TIME_DTYPE)
