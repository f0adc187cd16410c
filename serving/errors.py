"""The refusals of the online API as values, without a web framework: :class:`ApiError` (status,
title, detail, the field paths) and the common ones. The Flask app renders them as RFC 9457
problems (serving/problems.py); the V2 runtime (serving/v2.py) as MLServer errors with the
same status and detail.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

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
