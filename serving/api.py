"""``/v1``: the configured locations, the latest batch forecast, an on-demand forecast.

The on-demand forecast takes the path of every forecast (``pipeline/forecaster.py``) with the
champion's compiled trees as its engine: the same rows, with interval, category and
probabilities, as the batch predict step writes (``tests/serving/test_skew.py``). Views read
each snapshot of the :class:`~serving.state.ServingState` once.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

import numpy as np
import pandas as pd
from flask import Blueprint, Response, current_app, request
from pydantic import ValidationError

from pipeline.core.features import HourlyGrid, hours_since_observed, latest_features, window
from pipeline.core.keys import ModelKey
from pipeline.forecaster import Inputs, forecast
from pipeline.schema import VALUE_COLUMNS
from serving import metrics
from serving.problems import (
    JSON,
    ApiError,
    empty_body,
    json_response,
    no_query,
    not_ready,
    validation_problem,
)
from serving.schemas import ForecastRequest
from serving.state import ServingState

blueprint = Blueprint("v1", __name__, url_prefix="/v1")
# metric children by label values, looked up once
_AQI: dict[ModelKey, Any] = {}
_HOURS: dict[str, Any] = {}


def _route(rule: str, endpoint: str, methods: tuple[str, ...] = ("GET",)):
    """A view of the blueprint; its endpoint name is the metric label (``v1_forecasts_post``)."""
    def register(view):
        blueprint.add_url_rule(rule, endpoint, view, methods=list(methods),
                               provide_automatic_options=False)
        return view
    return register


def _state() -> ServingState:
    return current_app.extensions["aq_serving"]


def _iso_hour(hour: int) -> str:
    return dt.datetime.fromtimestamp(hour * 3600, dt.UTC).isoformat()


def _known_location(state: ServingState, location_id: str) -> None:
    if location_id not in state.locations:
        raise ApiError(404, "Unknown location",
                       f"location {location_id[:60]!r} is not configured; see /v1/locations",
                       "unknown_location", slug="unknown-location")


@_route("/locations", "v1_locations")
def locations() -> Response:
    no_query()
    state = _state()
    model = state.model
    return json_response({
        "locations": [loc.model_dump(mode="json") for loc in state.ctx.params.locations],
        "targets": model.targets if model else [],
        "horizons": model.horizons if model else [],
        "model_version": model.version if model else None,
    })


@_route("/forecasts/<location_id>", "v1_forecasts_get")
def batch_forecast(location_id: str) -> Response:
    no_query("target")
    state = _state()
    _known_location(state, location_id)
    target = request.args.get("target")
    model = state.model
    targets = model.targets if model else list(state.ctx.params.targets)
    if target is not None and target not in targets:
        raise ApiError(422, "Invalid request", f"query.target: {target[:40]!r} is not "
                       f"forecast; targets: {targets}", "invalid_query",
                       [{"path": "query.target", "message": "not a forecast target",
                         "type": "enum"}], slug="invalid-request")
    table = state.forecasts
    if table is None:
        raise ApiError(503, "No batch forecasts", "no batch forecasts yet "
                       f"({state.ctx.paths.latest_predictions.name} missing): run the predict "
                       "step", slug="not-ready", headers={"Retry-After": "60"})
    found = table.get(location_id)
    if found is None:
        raise ApiError(404, "No batch forecast", f"the latest batch has no forecast for "
                       f"location {location_id!r}", slug="no-batch-forecast")
    age = max(time.time() - found.issue_epoch, 0.0)
    stale_after = state.settings.stale_after_s
    return json_response({
        "location_id": location_id, "issue_time": found.issue_time.isoformat(),
        "age_seconds": round(age, 3), "stale": age > stale_after,
        "stale_after_seconds": stale_after, "model_version": found.model_version,
        "input_completeness": found.input_completeness,
        "forecasts": found.items if target is None else [i for i in found.items
                                                         if i["target"] == target],
    })


@_route("/forecasts", "v1_forecasts_post", ("POST",))
def on_demand() -> Response:
    if request.mimetype != JSON or request.mimetype_params.get(
            "charset", "utf-8").lower().replace("-", "") != "utf8":
        raise ApiError(415, "Unsupported Media Type",
                       f"send the body as {JSON} (UTF-8), not "
                       f"{request.content_type or 'no content type'}",
                       "unsupported_media_type", slug="unsupported-media-type")
    no_query()
    body = request.get_data(cache=False)  # over the limit: 413 (RequestEntityTooLarge)
    if not body.strip():
        raise empty_body()
    try:
        req = ForecastRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_problem(exc) from None
    state = _state()
    _known_location(state, req.location_id)
    served = state.model
    if served is None:
        raise not_ready(state.not_ready)
    grid = _merged(state, req)
    issue = int(grid.hours[-1])
    champion = served.champion
    features = latest_features(grid, champion.spec, state.timezones[req.location_id],
                               champion.code(req.location_id))
    last = np.array([len(grid) - 1])
    since = {t: float(hours_since_observed(grid.series[t], last)[0]) for t in champion.targets}
    inputs = Inputs.one(champion, req.location_id, pd.Timestamp(issue * 3600, unit="s", tz="UTC"),
                        features, {t: math.inf if math.isnan(h) else h for t, h in since.items()})
    made = forecast(champion, inputs, engine=served.predict, limits=state.limits)
    present = float(made.completeness[0])
    _observe(present, since, len(req.observations))
    problems = made.withheld.get(req.location_id)
    if problems:  # the batch pipeline's rule (forecast.* in params.yaml)
        raise ApiError(422, "Insufficient inputs",
                       f"no honest forecast for {req.location_id!r} at {_iso_hour(issue)}: "
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
    return json_response({
        "location_id": req.location_id,
        "issue_time": _iso_hour(issue),
        "model_version": champion.version,
        "observations_used": len(req.observations),
        "completeness": {"features_present": round(present, 6),
                         "hours_since_observation": {t: None if math.isnan(h) else int(h)
                                                     for t, h in since.items()}},
        "forecasts": items,
    })


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
