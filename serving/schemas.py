"""Request and response models of the online API, and the OpenAPI 3.1 document built from them.

The same pydantic models validate the requests (``ForecastRequest.model_validate_json``) and
describe them in ``/openapi.json``; the response models describe what the handlers return
(the tests validate real responses against them, and schemathesis checks the document).
Observation fields are the canonical variables of ``pipeline/schema.py``, with their units
and physical ranges.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model, field_validator
from pydantic.json_schema import models_json_schema

from pipeline.core.aqi import CATEGORIES
from pipeline.core.intervals import PROBABILITY_COLUMNS, PROBABILITY_PREFIX
from pipeline.schema import POLLUTANTS, VALUE_COLUMNS, VARIABLES, WEATHER

MAX_OBSERVATIONS = 500
LOCATION_ID = r"^[a-z0-9_]+$"
PROBLEM_JSON = "application/problem+json"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, strict=True)


def _on_the_hour(value: dt.datetime) -> dt.datetime:
    value = value.astimezone(dt.UTC)
    if value.minute or value.second or value.microsecond:
        raise ValueError("must be on the hour (an hourly observation covers one whole UTC hour)")
    if value > dt.datetime.now(dt.UTC):
        raise ValueError("is in the future")
    return value


def _variable_field(name: str) -> Any:
    var = VARIABLES[name]
    return (
        Annotated[float | None, Field(
            ge=var.low, le=var.high,
            description=f"{var.description} [{var.unit}], {var.low:g} to {var.high:g}; "
                        "null or absent = not observed",
        )],
        None,
    )


class _ObservationBase(_Request):
    time: Annotated[AwareDatetime, Field(
        description="start of the observed UTC hour, ISO 8601 with an offset "
                    "(YYYY-MM-DDTHH:00:00Z); on the hour, not in the future")]

    @field_validator("time")
    @classmethod
    def _check_time(cls, value: dt.datetime) -> dt.datetime:
        return _on_the_hour(value)


Observation = create_model(
    "Observation",
    __base__=_ObservationBase,
    __doc__="One hour of observations at the location, in the canonical units.",
    **{name: _variable_field(name) for name in VALUE_COLUMNS},
)


class ForecastRequest(_Request):
    """An on-demand forecast, optionally with the newest observations of the location."""

    location_id: Annotated[str, Field(min_length=1, max_length=40, pattern=LOCATION_ID,
                                      description="a location id of GET /v1/locations")]
    observations: Annotated[list[Observation], Field(  # type: ignore[valid-type]
        max_length=MAX_OBSERVATIONS,
        description="the newest hourly observations (at most one per hour); they replace the "
                    "stored values of the same hour, and the forecast is issued at the newest "
                    "hour known")] = []


# --- responses -----------------------------------------------------------------------------

AqiCategory = Literal[(*CATEGORIES, "unknown")]


class Location(BaseModel):
    id: str
    name: str
    latitude: float
    longitude: float
    timezone: str


class LocationsResponse(BaseModel):
    """The configured locations and what the champion forecasts for them."""

    locations: list[Location]
    targets: list[str] = Field(description="pollutants the champion forecasts")
    horizons: list[int] = Field(description="hours ahead the champion forecasts")
    model_version: str | None = Field(description="the champion served; null before the first")


class _ForecastItem(BaseModel):
    target: str
    horizon: int = Field(description="hours ahead of the issue time")
    target_time: dt.datetime = Field(description="the UTC hour forecast")
    value: float = Field(description="forecast concentration [ug/m3]")
    lower: float | None = Field(description="80 % prediction interval, lower end [ug/m3] "
                                            "(null: the model has no calibration)")
    upper: float | None = Field(description="80 % prediction interval, upper end [ug/m3]")
    aqi: float | None = Field(description="US EPA AQI of the value")
    aqi_category: AqiCategory  # type: ignore[valid-type]
    hours_since_observation: float | None = Field(
        description="hours from the target's newest observation to the issue time "
                    "(null: not observed in the data looked at)")


ForecastItem = create_model(
    "ForecastItem",
    __base__=_ForecastItem,
    __doc__="One target x horizon: the fields of a batch forecast row "
            "(predictions/*.parquet), online and batch alike.",
    **{column: (float | None, Field(
        description=f"probability that the value reaches {column.removeprefix(PROBABILITY_PREFIX)}"
                    " (at or above the category's lower breakpoint), from the calibration"))
       for column in PROBABILITY_COLUMNS},
)


class BatchForecastResponse(BaseModel):
    """The latest batch forecast of a location (``predictions/latest.parquet``)."""

    location_id: str
    issue_time: dt.datetime = Field(description="the hour the forecast was issued from")
    age_seconds: float = Field(description="now minus the issue time")
    stale: bool = Field(description="true when older than stale_after_seconds: "
                                    "the batch pipeline has not forecast since")
    stale_after_seconds: float
    model_version: str
    input_completeness: float | None = Field(
        default=None, description="share of the model's features present in the batch row")
    forecasts: list[ForecastItem]  # type: ignore[valid-type]


class Completeness(BaseModel):
    """How complete the inputs of an online forecast were."""

    features_present: float = Field(ge=0, le=1, description="share of the model's inputs known")
    hours_since_observation: dict[str, int | None] = Field(
        description="per target: hours from its newest observation to the issue time "
                    "(null: none in the window)")


class OnDemandForecastResponse(BaseModel):
    """Forecasts of every target x horizon of the champion, issued at the newest hour known."""

    location_id: str
    issue_time: dt.datetime
    model_version: str
    observations_used: int = Field(description="observations of the request used")
    completeness: Completeness
    forecasts: list[ForecastItem]  # type: ignore[valid-type]


class ProblemError(BaseModel):
    path: str = Field(description="where: a JSON path into the body (observations[0].time), "
                                  "query.<name> or path.<name>")
    message: str
    type: str


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (application/problem+json)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[ProblemError] | None = None


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    model_version: str
    engines: dict[str, dict[str, str]] = Field(
        description="per target and horizon (hours): treelite or sklearn")


# --- OpenAPI -------------------------------------------------------------------------------


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str) -> dict:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": _ref("Problem")}}}


def openapi(max_body_bytes: int, example: dict[str, Any] | None = None) -> dict:
    """The OpenAPI 3.1 document of the API (JSON Schema 2020-12 from the pydantic models);
    ``example``: the on-demand request it shows (serving builds it from its newest hour)."""
    models = [ForecastRequest, LocationsResponse, BatchForecastResponse,
              OnDemandForecastResponse, Problem, Health, Ready]
    _, schemas = models_json_schema([(m, "validation" if m is ForecastRequest else "serialization")
                                     for m in models],
                                    ref_template="#/components/schemas/{model}")
    json_ok = {"application/json": {}}
    target_param = {
        "name": "target", "in": "query", "required": False,
        "description": "only this pollutant",
        "schema": {"type": "string", "enum": list(POLLUTANTS)},
    }
    location_param = {
        "name": "location_id", "in": "path", "required": True,
        "description": "a location id of GET /v1/locations",
        "schema": {"type": "string"},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aq-forecast online forecasts",
            "version": "1",
            "description": (
                "Air-quality forecasts for the configured locations: the latest batch forecast, "
                "or an on-demand one built from the stored history and the observations you "
                "send, with the same feature code and champion model as the batch pipeline. "
                "Errors are RFC 9457 problem details."),
        },
        "paths": {
            "/v1/locations": {"get": {
                "operationId": "listLocations",
                "summary": "The configured locations, with the champion's targets and horizons",
                "responses": {
                    "200": {"description": "locations",
                            "content": {"application/json": {
                                "schema": _ref("LocationsResponse")}}},
                },
            }},
            "/v1/forecasts/{location_id}": {"get": {
                "operationId": "getBatchForecast",
                "summary": "The latest batch forecast of a location (stale ones are flagged)",
                "parameters": [location_param, target_param],
                "responses": {
                    "200": {"description": "every target x horizon of the latest batch",
                            "content": {"application/json": {
                                "schema": _ref("BatchForecastResponse")}}},
                    "404": _problem("unknown location, or no batch forecast for it"),
                    "422": _problem("a query parameter is invalid"),
                    "503": _problem("no batch forecasts yet"),
                },
            }},
            "/v1/forecasts": {"post": {
                "operationId": "forecastOnDemand",
                "summary": "An on-demand forecast from the stored history and new observations",
                "requestBody": {
                    "required": True,
                    "description": f"at most {max_body_bytes} bytes",
                    "content": {"application/json": {
                        "schema": _ref("ForecastRequest"),
                        **({"examples": {"newest_hour": {
                            "summary": "new values for the newest hour the server stores",
                            "value": example}}} if example else {}),
                    }},
                },
                "responses": {
                    "200": {"description": "every target x horizon of the champion",
                            "content": {"application/json": {
                                "schema": _ref("OnDemandForecastResponse")}}},
                    "400": _problem("the body is not valid JSON"),
                    "404": _problem("unknown location"),
                    "413": _problem("the body is too large"),
                    "415": _problem("the body is not application/json"),
                    "422": _problem("the body violates the schema or holds impossible values, "
                                    "or the inputs are too incomplete for an honest forecast"),
                    "503": _problem("no verified champion loaded yet"),
                },
            }},
            "/healthz": {"get": {
                "operationId": "health", "summary": "The process is alive",
                "responses": {"200": {"description": "alive", "content": {
                    "application/json": {"schema": _ref("Health")}}}},
            }},
            "/readyz": {"get": {
                "operationId": "ready", "summary": "A verified champion is loaded",
                "responses": {
                    "200": {"description": "ready", "content": {
                        "application/json": {"schema": _ref("Ready")}}},
                    "503": _problem("not ready, with the reason"),
                },
            }},
            "/metrics": {"get": {
                "operationId": "metrics", "summary": "Prometheus metrics of every worker",
                "responses": {"200": {"description": "Prometheus text format",
                                      "content": {"text/plain": {}}}},
            }},
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": json_ok}},
            }},
            "/docs": {"get": {
                "operationId": "docs", "summary": "This document as a page (works offline)",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
            }},
        },
        "components": {"schemas": schemas["$defs"]},
    }


__all__ = [
    "WEATHER", "POLLUTANTS", "ForecastRequest", "Observation", "Problem", "openapi",
]
