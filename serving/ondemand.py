"""The on-demand forecast, without a web framework: the answer ``POST /v1/forecasts`` gives
(serving/api.py) and the V2 inference runtime gives (serving/v2.py), one function for both, so
the same request gets the same forecast from either.

The request's observations are merged into the location's stored history, the feature row is
built by ``pipeline/core/features.py`` with the champion's own settings, and the forecast takes
the path of every forecast (``pipeline/forecaster.py``) with the champion's compiled trees as
its engine; the batch pipeline's honesty rule withholds it when the inputs are too incomplete.
Refusals are :class:`~serving.errors.ApiError` values.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np

from pipeline.core.features import HourlyGrid, hours_since_observed, latest_row, window
from pipeline.core.keys import ModelKey
from pipeline.forecaster import Inputs, forecast
from pipeline.schema import VALUE_COLUMNS
from serving import metrics
from serving.errors import ApiError, not_ready
from serving.schemas import ForecastRequest
from serving.state import ServingState

# metric children by label values, looked up once
_AQI: dict[ModelKey, Any] = {}
_HOURS: dict[str, Any] = {}


def iso_hour(hour: int) -> str:
    return dt.datetime.fromtimestamp(hour * 3600, dt.UTC).isoformat()


def known_location(state: ServingState, location_id: str) -> None:
    if location_id not in state.locations:
        raise ApiError(404, "Unknown location",
                       f"location {location_id[:60]!r} is not configured; see /v1/locations",
                       "unknown_location", slug="unknown-location")


def answer(state: ServingState, req: ForecastRequest) -> dict[str, Any]:
    """The on-demand forecast of a validated request, as the JSON body ``/v1`` answers."""
    known_location(state, req.location_id)
    served = state.model
    if served is None:
        raise not_ready(state.not_ready)
    grid = _merged(state, req)
    issue = int(grid.hours[-1])
    champion = served.champion
    features = latest_row(grid, champion.spec, state.timezones[req.location_id],
                          champion.code(req.location_id))
    last = np.array([len(grid) - 1])
    since = {t: float(hours_since_observed(grid.series[t], last)[0]) for t in champion.targets}
    inputs = Inputs.one(champion, req.location_id, np.datetime64(issue, "h"), features,
                        {t: math.inf if math.isnan(h) else h for t, h in since.items()})
    made = forecast(champion, inputs, engine=served.predict, limits=state.limits)
    present = float(made.completeness[0])
    _observe(present, since, len(req.observations))
    problems = made.withheld.get(req.location_id)
    if problems:  # the batch pipeline's rule (forecast.* in params.yaml)
        raise ApiError(422, "Insufficient inputs",
                       f"no honest forecast for {req.location_id!r} at {iso_hour(issue)}: "
                       + "; ".join(problems) + ". Send the newest observations.",
                       "insufficient_inputs",
                       [{"path": "observations", "message": p, "type": "insufficient_inputs"}
                        for p in problems], slug="insufficient-inputs")
    items = made.items()
    for item in items:
        if item["aqi"] is not None:
            key = ModelKey(item["target"], item["horizon"])
            child = _AQI.get(key)
            if child is None:
                child = _AQI[key] = metrics.PREDICTION_AQI.labels(**key.labels())
            child.observe(item["aqi"])
    return {
        "location_id": req.location_id,
        "issue_time": iso_hour(issue),
        "model_version": champion.version,
        "observations_used": len(req.observations),
        "completeness": {"features_present": round(present, 6),
                         "hours_since_observation": {t: None if math.isnan(h) else int(h)
                                                     for t, h in since.items()}},
        "forecasts": items,
    }


def _observe(present: float, since: dict[str, float], observations: int) -> None:
    metrics.FEATURES_PRESENT.observe(present)
    for target, hours in since.items():
        if not math.isnan(hours):
            child = _HOURS.get(target)
            if child is None:
                child = _HOURS[target] = metrics.HOURS_SINCE_OBSERVATION.labels(target=target)
            child.observe(hours)
    if observations:
        metrics.OBSERVATIONS.inc(observations)


def _merged(state: ServingState, req: ForecastRequest) -> HourlyGrid:
    """The location's window ending at the newest hour known, with the request's values."""
    stored = state.history.get(req.location_id)
    warmup = state.history_hours
    hours = [int(o.time.timestamp()) // 3600 for o in req.observations]
    seen: dict[int, int] = {}
    errors = []
    for i, hour in enumerate(hours):
        if hour in seen:
            errors.append({"path": f"observations[{i}].time",
                           "message": f"duplicate hour: observations[{seen[hour]}] has the "
                                      "same hour", "type": "duplicate_hour"})
        seen.setdefault(hour, i)
    newest = max([int(stored.hours[-1])] if stored is not None and len(stored) else [],
                 default=None)
    if hours:
        newest = max(hours) if newest is None else max(newest, max(hours))
    if newest is None:
        raise ApiError(422, "Invalid request", f"no stored history for {req.location_id!r} and "
                       "no observations: send at least one observation", "missing_field",
                       [{"path": "observations", "message": "required: the location has no "
                         "stored history", "type": "missing"}], slug="invalid-request")
    start = newest - warmup + 1
    for i, hour in enumerate(hours):
        if hour < start:
            errors.append({"path": f"observations[{i}].time",
                           "message": f"older than the {warmup}-hour feature window ending at "
                                      f"{iso_hour(newest)}", "type": "outside_window"})
    if errors:
        raise ApiError(422, "Invalid request", f"{len(errors)} problem(s): " + "; ".join(
            f"{e['path']}: {e['message']}" for e in errors[:5]), errors[0]["type"], errors,
            slug="invalid-request")
    if not hours and stored is not None:
        return stored
    if stored is not None:
        grid = window(stored, start, newest)
    else:
        grid = HourlyGrid.from_rows(req.location_id, np.array([newest]), {}, start, newest)
    for observation, hour in zip(req.observations, hours, strict=True):
        index = hour - start
        for name in VALUE_COLUMNS:
            value = getattr(observation, name)
            if value is not None:
                grid.series[name][index] = value
    return grid
