"""Every answer that is not 2xx is an RFC 9457 problem (``application/problem+json``).

:class:`ApiError` is raised by the views; :data:`blueprint` turns it, Werkzeug's HTTP errors
and anything unexpected into problem documents for the whole app, and counts each refusal in
``aq_serving_validation_failures_total{reason}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from flask import Blueprint, Response, current_app, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from serving import metrics
from serving.schemas import PROBLEM_JSON

log = logging.getLogger(__name__)
JSON = "application/json"
# pydantic prefixes the message of a validator's ValueError with this: the reader needs the rest
PYDANTIC_VALUE_ERROR = "Value error, "


class ApiError(Exception):
    """An answer that is not 2xx, as a problem document."""

    def __init__(self, status: int, title: str, detail: str, reason: str | None = None,
                 errors: list[dict[str, str]] | None = None, slug: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.reason, self.errors, self.slug, self.headers = reason, errors, slug, headers


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


def not_ready(detail: str) -> ApiError:
    return ApiError(503, "Not ready", detail, slug="not-ready", headers={"Retry-After": "5"})


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


def empty_body() -> ApiError:
    return ApiError(400, "Malformed JSON", "empty body: send a JSON object, e.g. "
                    '{"location_id": "..."} (see /docs#examples)', "malformed_json",
                    slug="malformed-json")


def validation_problem(exc: ValidationError) -> ApiError:
    """400 for a body that is not JSON, else 422 naming every field path and why."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return ApiError(400, "Malformed JSON", f"the body is not valid JSON: {errors[0]['msg']}",
                        "malformed_json", slug="malformed-json")
    items = [{"path": _path(e["loc"]), "message": str(e["msg"]).removeprefix(
        PYDANTIC_VALUE_ERROR), "type": e["type"]} for e in errors]
    return ApiError(422, "Invalid request",
                    f"{len(items)} problem(s): " + "; ".join(
                        f"{i['path']}: {i['message']}" for i in items[:5]),
                    _reason(errors[0]), items, slug="invalid-request")


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
