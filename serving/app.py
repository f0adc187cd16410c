"""The online forecast API: a Flask app, run by gunicorn (``serving/gunicorn_conf.py``).

``create_app()`` loads the project (params.yaml), the champion, the latest batch forecasts
and the recent history into a :class:`~serving.state.ServingState` and starts its reload
thread. Handlers read each snapshot once. Every error is an RFC 9457 problem
(``application/problem+json``); bad input never gets a 5xx. See docs/serving.md.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from flask import Flask, Response, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from pipeline.context import Context
from pipeline.settings import Ports, ServingSettings
from serving import metrics, ondemand
from serving.docs import render_docs
from serving.ondemand import ApiError, MetricChildren
from serving.schemas import PROBLEM_JSON, ForecastRequest, openapi
from serving.state import ServingState

log = logging.getLogger(__name__)
JSON = "application/json"


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
    children = MetricChildren()
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
        return _json(ondemand.on_demand(state, req, forecast_cfg, children))

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
