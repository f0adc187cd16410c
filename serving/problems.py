"""Every answer that is not 2xx is an RFC 9457 problem (``application/problem+json``).

:class:`ApiError` is raised by the views; :data:`blueprint` turns it, Werkzeug's HTTP errors
and anything unexpected into problem documents for the whole app, and counts each refusal in
``aq_serving_validation_failures_total{reason}``. The refusals themselves are values of
serving/errors.py (no Flask: the V2 runtime raises them too).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from serving import metrics
from serving.errors import ApiError
from serving.schemas import PROBLEM_JSON

log = logging.getLogger(__name__)
JSON = "application/json"


def dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status=status, mimetype=JSON)


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
    response = Response(dumps(body), status=exc.status, mimetype=PROBLEM_JSON)
    for key, value in (exc.headers or {}).items():
        response.headers[key] = value
    return response


def no_query(*allowed: str) -> None:
    """Refuse query parameters a view does not take (422 naming them)."""
    extra = sorted(set(request.args) - set(allowed))
    if extra:
        raise ApiError(422, "Invalid request", f"unknown query parameter(s) {extra[:5]}",
                       "invalid_query",
                       [{"path": f"query.{name[:40]}", "message": "unknown query parameter",
                         "type": "extra_forbidden"} for name in extra[:20]],
                       slug="invalid-request")


blueprint = Blueprint("problems", __name__)


@blueprint.app_errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return problem(exc)


@blueprint.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    reason = {413: "body_too_large", 415: "unsupported_media_type"}.get(status)
    detail = {
        404: f"no resource at {request.path}; see /docs",
        405: f"{request.method} is not allowed on {request.path}",
        413: f"the body is larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes "
             "(AQ_SERVING_MAX_BODY_BYTES)",
    }.get(status, exc.description or exc.name)
    headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
    return problem(ApiError(status, exc.name, detail, reason, headers=headers))


@blueprint.app_errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return problem(ApiError(500, "Internal Server Error",
                            "the server failed to answer; the error is logged"))
