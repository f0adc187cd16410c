"""``/healthz`` (the process answers) and ``/readyz`` (a verified champion is loaded)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from serving.errors import not_ready
from serving.problems import json_response

blueprint = Blueprint("service", __name__)


@blueprint.get("/healthz", endpoint="healthz", provide_automatic_options=False)
def healthz() -> Response:
    return json_response({"status": "ok"})


@blueprint.get("/readyz", endpoint="readyz", provide_automatic_options=False)
def readyz() -> Response:
    state = current_app.extensions["aq_serving"]
    model = state.model
    if model is None:
        raise not_ready(state.not_ready)
    return json_response({"status": "ready", "model_version": model.version,
                          "engines": model.engines})
