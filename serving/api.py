"""``/v1``: the configured locations, the latest batch forecast, an on-demand forecast.

The on-demand forecast (``serving/ondemand.py: answer``, shared with the V2 runtime
``serving/v2.py``) takes the path of every forecast (``pipeline/forecaster.py``) with the
champion's compiled trees as its engine: the same rows, with interval, category and
probabilities, as the batch predict step writes (``tests/serving/test_skew.py``). Views read
each snapshot of the :class:`~serving.state.ServingState` once.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, request
from pydantic import ValidationError

from serving import ondemand
from serving.errors import ApiError, empty_body, validation_problem
from serving.ondemand import known_location
from serving.problems import JSON, dumps, json_response, no_query
from serving.schemas import ForecastRequest
from serving.state import ServingState

blueprint = Blueprint("v1", __name__, url_prefix="/v1")


def _route(rule: str, endpoint: str, methods: tuple[str, ...] = ("GET",)):
    """A view of the blueprint; its endpoint name is the metric label (``v1_forecasts_post``)."""
    def register(view):
        blueprint.add_url_rule(rule, endpoint, view, methods=list(methods),
                               provide_automatic_options=False)
        return view
    return register


def _state() -> ServingState:
    return current_app.extensions["aq_serving"]


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
    known_location(state, location_id)
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
    head = dumps({
        "location_id": location_id, "issue_time": found.issue_time.isoformat(),
        "age_seconds": round(age, 3), "stale": age > stale_after,
        "stale_after_seconds": stale_after, "model_version": found.model_version,
        "input_completeness": found.input_completeness,
    })
    # the items were serialised when the file was read: only the head changes per request
    items = found.items_json.get(target, "[]")
    return Response(f'{head[:-1]},"forecasts":{items}}}', mimetype=JSON)


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
    return json_response(ondemand.answer(_state(), req))


