"""The on-demand forecast, without a web framework: the Flask endpoint (``POST /v1/forecasts``,
serving/app.py) and the V2 inference runtime (serving/v2.py) both answer with :func:`on_demand`,
so one request gives the same forecast on both.

The request's observations are merged into the stored history of the location, the feature row
is built by ``pipeline/core/features.py`` (``latest_features``, with the champion's own
settings), the batch pipeline's honesty rule applies (``pipeline/core/quality.py``), and the
champion predicts every target x horizon (Treelite where it is exact, ``serving/predictor.py``).
Refusals are :class:`ApiError` (status, title, detail, the field paths), which each front end
renders its own way.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.core.aqi import CATEGORIES, CATEGORY_UPPER_AQI, aqi
from pipeline.core.features import (
    HourlyGrid,
    features_present,
    hours_since_observed,
    latest_features,
    window,
)
from pipeline.core.quality import input_problems
from pipeline.schema import POLLUTANTS, VALUE_COLUMNS
from serving import metrics
from serving.schemas import ForecastRequest
from serving.state import ServingState

CATEGORY_NAMES = (*CATEGORIES, "unknown")


class ApiError(Exception):
    """An answer that is not 2xx, as a problem document."""

    def __init__(self, status: int, title: str, detail: str, reason: str | None = None,
                 errors: list[dict[str, str]] | None = None, slug: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.reason, self.errors, self.slug, self.headers = reason, errors, slug, headers


@dataclass
class MetricChildren:
    """Labelled metric children, kept per process (``labels()`` costs a lookup per call)."""

    aqi: dict[tuple[str, int], Any] = field(default_factory=dict)
    hours: dict[str, Any] = field(default_factory=dict)


def on_demand(state: ServingState, req: ForecastRequest, forecast_cfg,
              children: MetricChildren) -> dict[str, Any]:
    """The answer to a validated request (``forecast_cfg``: ``forecast`` of params.yaml), or
    :class:`ApiError`: unknown location, no champion yet, a bad observation window, too
    incomplete inputs."""
    if req.location_id not in state.locations:
        raise ApiError(404, "Unknown location",
                       f"location {req.location_id[:60]!r} is not configured; see /v1/locations",
                       "unknown_location", slug="unknown-location")
    model = state.model
    if model is None:
        raise ApiError(503, "Not ready", state.not_ready, slug="not-ready",
                       headers={"Retry-After": "5"})
    grid = _merged(state, req)
    features = latest_features(grid, model.spec, state.timezones[req.location_id],
                               _code(model.metadata, req.location_id))
    row = np.fromiter((features[n] for n in model.features), np.float64,
                      len(model.features))
    issue = int(grid.hours[-1])
    present = float(features_present(row)[0])
    metrics.FEATURES_PRESENT.observe(present)
    since: dict[str, int | None] = {}
    last = np.array([len(grid) - 1])
    for target in model.targets:
        hours = hours_since_observed(grid.series[target], last)[0]
        since[target] = None if math.isnan(hours) else int(hours)
        if since[target] is not None:
            child = children.hours.get(target)
            if child is None:
                child = children.hours[target] = metrics.HOURS_SINCE_OBSERVATION.labels(
                    target=target)
            child.observe(since[target])
    if req.observations:
        metrics.OBSERVATIONS.inc(len(req.observations))
    # the batch pipeline's rule (forecast.* in params.yaml): no forecast from too little
    problems = input_problems(
        present, {t: math.inf if h is None else float(h) for t, h in since.items()},
        _iso_hour(issue), forecast_cfg.min_input_completeness,
        forecast_cfg.max_hours_since_observation)
    if problems:
        raise ApiError(422, "Insufficient inputs",
                       f"no honest forecast for {req.location_id!r} at {_iso_hour(issue)}: "
                       + "; ".join(problems) + ". Send the newest observations.",
                       "insufficient_inputs",
                       [{"path": "observations", "message": p, "type": "insufficient_inputs"}
                        for p in problems], slug="insufficient-inputs")
    predictions = model.predict(row)
    return {
        "location_id": req.location_id,
        "issue_time": _iso_hour(issue),
        "model_version": model.version,
        "observations_used": len(req.observations),
        "completeness": {"features_present": round(present, 6),
                         "hours_since_observation": since},
        "forecasts": _items(predictions, issue, children.aqi),
    }


def _iso_hour(hour: int) -> str:
    return dt.datetime.fromtimestamp(hour * 3600, dt.UTC).isoformat()


def _code(metadata: dict, location_id: str) -> float:
    code = metadata.get("location_codes", {}).get(location_id)
    return float("nan") if code is None else float(code)


def _merged(state: ServingState, req: ForecastRequest):
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
                                      f"{_iso_hour(newest)}", "type": "outside_window"})
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


def _category(index: float) -> int:
    """pipeline.core.aqi.category_index of an AQI value (0 good .. 5 hazardous)."""
    for i, high in enumerate(CATEGORY_UPPER_AQI):
        if index <= high:
            return i
    return len(CATEGORY_UPPER_AQI) - 1


def _items(predictions: dict, issue: int, children: dict) -> list[dict[str, Any]]:
    by_target: dict[str, list[tuple[int, float]]] = {}
    for (target, horizon), values in predictions.items():
        by_target.setdefault(target, []).append((horizon, max(float(values[0]), 0.0)))
    items = []
    for target in sorted(by_target):
        pairs = sorted(by_target[target])
        values = np.array([v for _, v in pairs])
        indices = aqi(target, values) if target in POLLUTANTS else np.full(len(values), np.nan)
        for (horizon, value), index in zip(pairs, indices, strict=True):
            known = not math.isnan(index)
            items.append({
                "target": target, "horizon": horizon,
                "target_time": _iso_hour(issue + horizon),
                "value": value, "aqi": float(index) if known else None,
                "aqi_category": CATEGORY_NAMES[_category(index)] if known else "unknown",
            })
            if known:
                child = children.get((target, horizon))
                if child is None:
                    child = children[(target, horizon)] = metrics.PREDICTION_AQI.labels(
                        target=target, horizon=str(horizon))
                child.observe(index)
    return items
