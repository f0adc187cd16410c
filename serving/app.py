"""The online forecast API: a Flask app, run by gunicorn (``serving/gunicorn_conf.py``).

``create_app()`` loads the project (params.yaml), the champion, the latest batch forecasts
and the recent history into a :class:`~serving.state.ServingState` and starts its reload
thread. Handlers read each snapshot once. Every error is an RFC 9457 problem
(``application/problem+json``); bad input never gets a 5xx. See docs/serving.md.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from flask import Flask, Response, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from pipeline.context import Context
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
from pipeline.settings import Ports, ServingSettings
from serving import metrics
from serving.docs import render_docs
from serving.schemas import PROBLEM_JSON, ForecastRequest, openapi
from serving.state import ServingState

log = logging.getLogger(__name__)
CATEGORY_NAMES = (*CATEGORIES, "unknown")
JSON = "application/json"


class ApiError(Exception):
    """An answer that is not 2xx, as a problem document."""

    def __init__(self, status: int, title: str, detail: str, reason: str | None = None,
                 errors: list[dict[str, str]] | None = None, slug: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.reason, self.errors, self.slug, self.headers = reason, errors, slug, headers


def _dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def _json(body: Any, status: int = 200) -> Response:
    return Response(_dumps(body), status=status, mimetype=JSON)


def problem(exc: ApiError) -> Response:
    body: dict[str, Any] = {
        "type": f"/docs#{exc.slug}" if exc.slug else "about:blank",
        "title": exc.title, "status": exc.status, "detail": exc.detail,
        "instance": request.path,
    }
    if exc.errors:
        body["errors"] = exc.errors
    if exc.reason:
        metrics.VALIDATION_FAILURES.labels(reason=exc.reason).inc()
    response = Response(_dumps(body), status=exc.status, mimetype=PROBLEM_JSON)
    for key, value in (exc.headers or {}).items():
        response.headers[key] = value
    return response


def _path(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(body)"


_REASONS = {
    "missing": "missing_field", "extra_forbidden": "unknown_field",
    "greater_than_equal": "out_of_range", "less_than_equal": "out_of_range",
    "finite_number": "out_of_range", "too_long": "out_of_range", "too_short": "out_of_range",
    "string_too_long": "out_of_range", "string_too_short": "out_of_range",
    "string_pattern_mismatch": "out_of_range",
}


def _reason(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "value_error":
        text = str(error.get("msg", ""))
        if "future" in text:
            return "future_time"
        if "on the hour" in text:
            return "not_on_the_hour"
        return "other"
    if kind in _REASONS:
        return _REASONS[kind]
    if kind.endswith(("_type", "_parsing")) or kind in ("timezone_aware", "model_attributes_type"):
        return "wrong_type"
    return "other"


def validation_problem(exc: ValidationError) -> ApiError:
    """400 for a body that is not JSON, else 422 naming every field path and why."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return ApiError(400, "Malformed JSON", f"the body is not valid JSON: {errors[0]['msg']}",
                        "malformed_json", slug="malformed-json")
    items = [{"path": _path(e["loc"]), "message": e["msg"], "type": e["type"]} for e in errors]
    return ApiError(422, "Invalid request",
                    f"{len(items)} problem(s): " + "; ".join(
                        f"{i['path']}: {i['message']}" for i in items[:5]),
                    _reason(errors[0]), items, slug="invalid-request")


def _iso_hour(hour: int) -> str:
    return dt.datetime.fromtimestamp(hour * 3600, dt.UTC).isoformat()


def create_app(ctx: Context | None = None, settings: ServingSettings | None = None,
               start: bool = True) -> Flask:
    ctx = ctx or Context.load()
    settings = settings or ServingSettings.from_env()
    state = ServingState(ctx, settings)
    app = Flask("serving")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["aq_serving"] = state
    metrics.instrument(app)
    forecast_cfg = ctx.params.forecast
    aqi_children: dict[tuple[str, int], Any] = {}
    hours_children: dict[str, Any] = {}
    docs_cache: dict[str, Any] = {}

    def route(rule: str, endpoint: str, methods: tuple[str, ...] = ("GET",)):
        def register(view):
            app.add_url_rule(rule, endpoint, view, methods=list(methods),
                             provide_automatic_options=False)
            return view
        return register

    # --- errors ----------------------------------------------------------------------------

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return problem(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        reason = {413: "body_too_large", 415: "unsupported_media_type"}.get(status)
        detail = {
            404: f"no resource at {request.path}; see /docs",
            405: f"{request.method} is not allowed on {request.path}",
            413: f"the body is larger than {settings.max_body_bytes} bytes "
                 "(AQ_SERVING_MAX_BODY_BYTES)",
        }.get(status, exc.description or exc.name)
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        return problem(ApiError(status, exc.name, detail, reason, headers=headers))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(ApiError(500, "Internal Server Error",
                                "the server failed to answer; the error is logged"))

    # --- service endpoints -----------------------------------------------------------------

    @route("/healthz", "healthz")
    def healthz():
        return _json({"status": "ok"})

    @route("/readyz", "readyz")
    def readyz():
        model = state.model
        if model is None:
            raise ApiError(503, "Not ready", state.not_ready, slug="not-ready",
                           headers={"Retry-After": "5"})
        return _json({"status": "ready", "model_version": model.version,
                      "engines": model.engines})

    @route("/openapi.json", "openapi")
    def openapi_json():
        return _json(_document())

    @route("/docs", "docs")
    def docs():
        if "html" not in docs_cache:
            docs_cache["html"] = render_docs(_document(), ctx.params.location_ids,
                                             Ports.from_env().url("serving"))
        return Response(docs_cache["html"], mimetype="text/html")

    def _document() -> dict:
        if "openapi" not in docs_cache:
            docs_cache["openapi"] = openapi(settings.max_body_bytes)
        return docs_cache["openapi"]

    # --- v1 --------------------------------------------------------------------------------

    @route("/v1/locations", "v1_locations")
    def locations():
        _no_query()
        model = state.model
        return _json({
            "locations": [loc.model_dump(mode="json") for loc in ctx.params.locations],
            "targets": model.targets if model else [],
            "horizons": model.horizons if model else [],
            "model_version": model.version if model else None,
        })

    @route("/v1/forecasts/<location_id>", "v1_forecasts_get")
    def batch_forecast(location_id: str):
        _no_query("target")
        _known_location(location_id)
        target = request.args.get("target")
        model = state.model
        targets = model.targets if model else list(ctx.params.targets)
        if target is not None and target not in targets:
            raise ApiError(422, "Invalid request", f"query.target: {target[:40]!r} is not "
                           f"forecast; targets: {targets}", "invalid_query",
                           [{"path": "query.target", "message": "not a forecast target",
                             "type": "enum"}], slug="invalid-request")
        table = state.forecasts
        if table is None:
            raise ApiError(503, "No batch forecasts", "no batch forecasts yet "
                           f"({ctx.paths.latest_predictions.name} missing): run the predict step",
                           slug="not-ready", headers={"Retry-After": "60"})
        found = table.get(location_id)
        if found is None:
            raise ApiError(404, "No batch forecast", f"the latest batch has no forecast for "
                           f"location {location_id!r}", slug="no-batch-forecast")
        age = max(time.time() - found.issue_epoch, 0.0)
        items = found.items if target is None else [i for i in found.items
                                                    if i["target"] == target]
        return _json({
            "location_id": location_id, "issue_time": found.issue_time.isoformat(),
            "age_seconds": round(age, 3), "stale": age > settings.stale_after_s,
            "stale_after_seconds": settings.stale_after_s,
            "model_version": found.model_version,
            "input_completeness": found.input_completeness, "forecasts": items,
        })

    @route("/v1/forecasts", "v1_forecasts_post", ("POST",))
    def on_demand():
        if request.mimetype != JSON or request.mimetype_params.get(
                "charset", "utf-8").lower().replace("-", "") != "utf8":
            raise ApiError(415, "Unsupported Media Type",
                           f"send the body as {JSON} (UTF-8), not "
                           f"{request.content_type or 'no content type'}",
                           "unsupported_media_type", slug="unsupported-media-type")
        _no_query()
        body = request.get_data(cache=False)  # over the limit: 413 (RequestEntityTooLarge)
        try:
            req = ForecastRequest.model_validate_json(body)
        except ValidationError as exc:
            raise validation_problem(exc) from None
        _known_location(req.location_id)
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
                child = hours_children.get(target)
                if child is None:
                    child = hours_children[target] = metrics.HOURS_SINCE_OBSERVATION.labels(
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
        return _json({
            "location_id": req.location_id,
            "issue_time": _iso_hour(issue),
            "model_version": model.version,
            "observations_used": len(req.observations),
            "completeness": {"features_present": round(present, 6),
                             "hours_since_observation": since},
            "forecasts": _items(predictions, issue, aqi_children),
        })

    def _known_location(location_id: str) -> None:
        if location_id not in state.locations:
            raise ApiError(404, "Unknown location",
                           f"location {location_id[:60]!r} is not configured; see /v1/locations",
                           "unknown_location", slug="unknown-location")

    if start:
        state.start()
    return app


def _no_query(*allowed: str) -> None:
    extra = sorted(set(request.args) - set(allowed))
    if extra:
        raise ApiError(422, "Invalid request", f"unknown query parameter(s) {extra[:5]}",
                       "invalid_query",
                       [{"path": f"query.{name[:40]}", "message": "unknown query parameter",
                         "type": "extra_forbidden"} for name in extra[:20]],
                       slug="invalid-request")


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
