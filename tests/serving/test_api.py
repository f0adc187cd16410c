"""The API against gunicorn: what a caller gets for good input and for every kind of bad input."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
import requests

from serving.schemas import (
    BatchForecastResponse,
    LocationsResponse,
    OnDemandForecastResponse,
    Problem,
)

pytestmark = pytest.mark.service

PROBLEM = "application/problem+json"


def post(server, body, content_type="application/json", **kwargs) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(f"{server.url}/v1/forecasts", data=data, timeout=10,
                         headers={"Content-Type": content_type} if content_type else {},
                         **kwargs)


def newest_hour(server) -> str:
    batch = pd.read_parquet(server.project.paths.latest_predictions)
    return pd.Timestamp(batch["issue_time"].max()).isoformat()


def test_locations_list_the_configuration_and_the_champion(server):
    reply = requests.get(f"{server.url}/v1/locations", timeout=10)
    assert reply.status_code == 200
    body = LocationsResponse.model_validate(reply.json())
    assert [loc.id for loc in body.locations] == ["berlin", "delhi"]
    assert body.locations[1].timezone == "Asia/Kolkata"
    assert body.targets == ["pm2_5"]
    assert body.horizons == [1, 6, 12, 24]
    assert body.model_version == server.project.champion


def test_batch_forecast_is_latest_parquet_with_its_age(server):
    reply = requests.get(f"{server.url}/v1/forecasts/delhi", timeout=10)
    assert reply.status_code == 200
    body = BatchForecastResponse.model_validate(reply.json())
    batch = pd.read_parquet(server.project.paths.latest_predictions)
    rows = batch[batch["location_id"] == "delhi"].sort_values("horizon")
    assert [f.value for f in body.forecasts] == rows["value"].tolist()
    assert [f.aqi_category for f in body.forecasts] == rows["aqi_category"].tolist()
    assert body.issue_time == rows["issue_time"].max().to_pydatetime()
    age = (dt.datetime.now(dt.UTC) - body.issue_time).total_seconds()
    assert abs(body.age_seconds - age) < 60
    # the synthetic data ends in 2025: far older than the limit, so flagged, not served as fresh
    assert body.stale is True
    assert body.stale_after_seconds == 3 * 3600
    filtered = requests.get(f"{server.url}/v1/forecasts/delhi?target=pm2_5", timeout=10).json()
    assert filtered["forecasts"] == reply.json()["forecasts"]
    # what the batch row carries: the interval and the category probabilities
    for item, (_, row) in zip(reply.json()["forecasts"], rows.iterrows(), strict=True):
        for column in ("lower", "upper", "p_reach_moderate", "p_reach_unhealthy",
                       "p_reach_hazardous", "hours_since_observation"):
            assert item[column] == pytest.approx(row[column], abs=1e-12), column


def test_on_demand_forecast_without_observations_equals_the_batch_forecast(server):
    """Same hour, same history, same champion: the online path gives the batch values."""
    batch = pd.read_parquet(server.project.paths.latest_predictions)
    for location in ("berlin", "delhi"):
        reply = post(server, {"location_id": location})
        assert reply.status_code == 200, reply.text
        body = OnDemandForecastResponse.model_validate(reply.json())
        rows = batch[batch["location_id"] == location].sort_values("horizon")
        assert body.issue_time == rows["issue_time"].max().to_pydatetime()
        assert body.model_version == server.project.champion
        assert [f.horizon for f in body.forecasts] == [1, 6, 12, 24]
        for item, expected in zip(body.forecasts, rows["value"], strict=True):
            assert item.value == pytest.approx(expected, abs=1e-9)
        assert [f.aqi_category for f in body.forecasts] == rows["aqi_category"].tolist()
        assert body.completeness.features_present > 0.9


def test_on_demand_forecast_with_the_next_hour_moves_the_issue_time(server):
    issue = pd.Timestamp(newest_hour(server)) + pd.Timedelta(hours=1)
    reply = post(server, {"location_id": "berlin", "observations": [
        {"time": issue.isoformat(), "pm2_5": 35.0, "pm10": 41.0, "no2": 30.0, "o3": 22.0,
         "temperature_2m": 2.5, "relative_humidity_2m": 90.0, "wind_speed_10m": 1.0,
         "wind_direction_10m": 200.0, "surface_pressure": 1001.0}]})
    assert reply.status_code == 200, reply.text
    body = OnDemandForecastResponse.model_validate(reply.json())
    assert body.issue_time == issue.to_pydatetime()
    assert body.observations_used == 1
    assert body.completeness.hours_since_observation == {"pm2_5": 0}
    assert body.completeness.features_present < 1  # that hour lacks the other variables
    assert body.forecasts[0].target_time == (issue + pd.Timedelta(hours=1)).to_pydatetime()


def test_too_incomplete_inputs_get_no_forecast_but_a_reason(server):
    """The batch rule (forecast.* in params.yaml): no pm2_5 for 48 h means no forecast."""
    issue = pd.Timestamp(newest_hour(server)) + pd.Timedelta(hours=48)
    reply = post(server, {"location_id": "delhi",
                          "observations": [{"time": issue.isoformat(), "temperature_2m": 20.0}]})
    assert reply.status_code == 422, reply.text
    problem = reply.json()
    assert problem["type"] == "/docs#insufficient-inputs"
    assert "pm2_5 last observed 48 h before" in problem["detail"]
    assert "features present" in problem["detail"]
    assert {e["path"] for e in problem["errors"]} == {"observations"}


def future() -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)).replace(
        minute=0, second=0, microsecond=0).isoformat()


def obs(**values) -> dict:
    return {"time": "2025-02-28T10:00:00Z", **values}


# (case, body, content type, status, reason metric label, error paths that must be named)
BAD_INPUT = [
    ("unknown location", {"location_id": "atlantis"}, "application/json", 404,
     "unknown_location", []),
    ("malformed JSON", '{"location_id": "berlin",', "application/json", 400,
     "malformed_json", []),
    ("not UTF-8", b'{"location_id": "\xff"}', "application/json", 400, "malformed_json", []),
    ("empty body", "", "application/json", 400, "malformed_json", []),
    ("wrong content type", '{"location_id": "berlin"}', "text/plain", 415,
     "unsupported_media_type", []),
    ("no content type", '{"location_id": "berlin"}', None, 415, "unsupported_media_type", []),
    ("form post", "location_id=berlin", "application/x-www-form-urlencoded", 415,
     "unsupported_media_type", []),
    ("not an object", "[1, 2]", "application/json", 422, "wrong_type", ["(body)"]),
    ("missing location", {"observations": []}, "application/json", 422, "missing_field",
     ["location_id"]),
    ("unknown field", {"location_id": "berlin", "colour": "blue"}, "application/json", 422,
     "unknown_field", ["colour"]),
    ("string for a number", {"location_id": "berlin", "observations": [obs(pm2_5="12")]},
     "application/json", 422, "wrong_type", ["observations[0].pm2_5"]),
    ("negative concentration", {"location_id": "berlin", "observations": [obs(pm2_5=-3.0)]},
     "application/json", 422, "out_of_range", ["observations[0].pm2_5"]),
    ("humidity 150 %", {"location_id": "berlin",
                        "observations": [obs(relative_humidity_2m=150.0)]},
     "application/json", 422, "out_of_range", ["observations[0].relative_humidity_2m"]),
    ("every bad field named", {"location_id": "berlin", "observations": [
        obs(pm2_5=-1.0, no2=-2.0), obs(time="2025-02-28T11:00:00Z", cloud_cover=101.0)]},
     "application/json", 422, "out_of_range",
     ["observations[0].pm2_5", "observations[0].no2", "observations[1].cloud_cover"]),
    ("time in the future", {"location_id": "berlin", "observations": [{"time": future()}]},
     "application/json", 422, "future_time", ["observations[0].time"]),
    ("time off the hour", {"location_id": "berlin",
                           "observations": [obs(time="2025-02-28T10:30:00Z")]},
     "application/json", 422, "not_on_the_hour", ["observations[0].time"]),
    ("time without offset", {"location_id": "berlin",
                             "observations": [obs(time="2025-02-28T10:00:00")]},
     "application/json", 422, "wrong_type", ["observations[0].time"]),
    ("duplicate hours", {"location_id": "berlin", "observations": [
        obs(pm2_5=1.0), obs(time="2025-02-28T11:00:00+01:00", pm2_5=2.0)]},
     "application/json", 422, "duplicate_hour", ["observations[1].time"]),
    ("hour before the feature window", {"location_id": "berlin",
                                        "observations": [obs(time="2024-01-01T00:00:00Z")]},
     "application/json", 422, "outside_window", ["observations[0].time"]),
    ("too many observations", {"location_id": "berlin",
                               "observations": [obs()] * 501},
     "application/json", 422, "out_of_range", ["observations"]),
    ("NaN", '{"location_id": "berlin", "observations": [{"time": "2025-02-28T10:00:00Z", '
            '"pm2_5": NaN}]}', "application/json", 422, "out_of_range",
     ["observations[0].pm2_5"]),
]


@pytest.mark.parametrize(("case", "body", "content_type", "status", "reason", "paths"),
                         BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_a_clear_problem_never_a_5xx(server, case, body, content_type, status,
                                                    reason, paths):
    before = validation_failures(server, reason)
    reply = post(server, body, content_type)
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"] == PROBLEM
    problem = Problem.model_validate(reply.json())
    assert problem.status == status
    assert problem.detail
    assert problem.instance == "/v1/forecasts"
    named = {e.path for e in problem.errors or []}
    assert set(paths) <= named, (paths, problem.errors)
    for error in problem.errors or []:
        assert error.message
    assert validation_failures(server, reason) == before + 1


def validation_failures(server, reason: str) -> float:
    prefix = f'aq_serving_validation_failures_total{{reason="{reason}"}} '
    for line in server.metrics().splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize(("body", "status", "path", "message"), [
    ("", 400, None, "empty body"),
    ("  \n", 400, None, "empty body"),
    ({"location_id": "berlin", "observations": [{"time": "FUTURE"}]}, 422,
     "observations[0].time", "is in the future"),
    ({"location_id": "berlin", "observations": [obs(time="2025-02-28T10:30:00Z")]}, 422,
     "observations[0].time", "must be on the hour"),
])
def test_messages_name_the_problem_in_words_not_the_parser_s(server, body, status, path,
                                                              message):
    """No "Value error, " prefix from pydantic, no "EOF while parsing" for an empty body."""
    if isinstance(body, dict) and body["observations"][0]["time"] == "FUTURE":
        body["observations"][0]["time"] = future()
    reply = post(server, body)
    assert reply.status_code == status, reply.text
    problem = reply.json()
    assert problem["detail"].startswith(message) or f"{path}: {message}" in problem["detail"]
    assert "Value error" not in reply.text
    assert "EOF" not in reply.text
    if path is not None:
        assert [(e["path"], e["message"][:len(message)]) for e in problem["errors"]] == \
            [(path, message)]


def test_oversized_body_is_413_with_the_limit(server):
    reply = post(server, '{"location_id": "berlin", "pad": "' + "x" * 70_000 + '"}')
    assert reply.status_code == 413
    assert reply.headers["Content-Type"] == PROBLEM
    assert "65536 bytes" in reply.json()["detail"]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("get", "/v1/forecasts/atlantis", 404),
    ("get", "/v1/forecasts/berlin?target=ozone", 422),
    ("get", "/v1/forecasts/berlin?colour=blue", 422),
    ("get", "/v1/nothing-here", 404),
    ("delete", "/v1/forecasts", 405),
    ("get", "/v1/forecasts", 405),
])
def test_other_bad_requests_are_problems_too(server, method, path, status):
    reply = getattr(requests, method)(f"{server.url}{path}", timeout=10)
    assert reply.status_code == status
    assert reply.headers["Content-Type"] == PROBLEM
    assert Problem.model_validate(reply.json()).status == status


def test_health_readiness_and_documents(server):
    assert requests.get(f"{server.url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{server.url}/readyz", timeout=10).json()
    assert ready["model_version"] == server.project.champion
    assert ready["engines"] == {"pm2_5": {h: "treelite" for h in ("1", "6", "12", "24")}}
    document = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    assert document["openapi"] == "3.1.0"
    assert {"/v1/locations", "/v1/forecasts/{location_id}", "/v1/forecasts"} <= set(
        document["paths"])
    page = requests.get(f"{server.url}/docs", timeout=10)
    assert page.headers["Content-Type"].startswith("text/html")
    assert "http" + "s://" not in page.text  # nothing to fetch from the internet
