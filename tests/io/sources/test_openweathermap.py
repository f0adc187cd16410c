"""OpenWeatherMap Air Pollution source (+ Open-Meteo weather) against the local replay server."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from pydantic import SecretStr

from pipeline.config import Location
from pipeline.config import OpenMeteoSource as OpenMeteoConfig
from pipeline.config import OpenWeatherMapSource as OwmConfig
from pipeline.io.sources.base import SourceError
from pipeline.io.sources.openweathermap import OpenWeatherMapSource, parse_air_pollution
from pipeline.settings import Settings
from tests.replay_server import (
    OWM_COMPONENTS,
    ReplayServer,
    Reply,
    open_meteo_handler,
    owm_body,
    owm_handler,
    truth,
)

KEY = "0123456789abcdef0123456789abcdef"
OWM = "/data/2.5/air_pollution"
AQ, FORECAST, ARCHIVE = "/v1/air-quality", "/v1/forecast", "/v1/archive"
NOW = pd.Timestamp("2025-03-20T12:34", tz="UTC")
BERLIN = Location(id="berlin", name="Berlin", latitude=52.52, longitude=13.405)
DELHI = Location(id="delhi", name="Delhi", latitude=28.6139, longitude=77.209)
CANONICAL = {"co": "co", "no2": "no2", "o3": "o3", "so2": "so2", "pm2_5": "pm2_5",
             "pm10": "pm10"}


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


@pytest.fixture
def server():
    with ReplayServer() as srv:
        for path in (OWM, f"{OWM}/history", f"{OWM}/forecast"):
            srv.route(path, owm_handler(KEY, now=lambda: NOW))
        for path in (AQ, FORECAST, ARCHIVE):
            srv.route(path, open_meteo_handler())
        yield srv


def make_source(srv, key=KEY, timeout=2.0, **config) -> OpenWeatherMapSource:
    settings = Settings(
        openweathermap_url=srv.url(OWM),
        openweathermap_api_key=SecretStr(key),
        open_meteo_air_quality_url=srv.url(AQ),
        open_meteo_forecast_url=srv.url(FORECAST),
        open_meteo_archive_url=srv.url(ARCHIVE),
        http_timeout_s=timeout,
    )
    config = {"backoff_s": 0.01, "max_retries": 2, "requests_per_second": 100, **config}
    open_meteo = OpenMeteoConfig(backoff_s=0.01, max_retries=1, requests_per_second=100)
    return OpenWeatherMapSource(OwmConfig(**config), settings, open_meteo, now=lambda: NOW)


def assert_pollutants_match(frame: pd.DataFrame, loc: Location) -> None:
    rows = frame[frame["location_id"] == loc.id]
    assert len(rows) > 0
    for component, column in CANONICAL.items():
        want = [truth(OWM_COMPONENTS[component], round(loc.latitude, 4), int(t.timestamp()))
                for t in rows["time"]]
        np.testing.assert_allclose(rows[column].to_numpy(), want, err_msg=column)


def test_history_window_gives_pollution_and_open_meteo_weather(server):
    result = make_source(server).fetch([BERLIN, DELHI], ts("2025-03-01"), ts("2025-03-02"))
    assert result.failures == {}
    assert result.frame.groupby("location_id").size().to_dict() == {"berlin": 24, "delhi": 24}
    for loc in (BERLIN, DELHI):
        assert_pollutants_match(result.frame, loc)
    assert result.frame["temperature_2m"].notna().all()
    history = server.requests_to(f"{OWM}/history")
    assert [(r.query["lat"], r.query["start"], r.query["end"]) for r in history] == [
        ("52.5200", str(int(ts("2025-03-01").timestamp())),
         str(int(ts("2025-03-02").timestamp()) - 1)),
        ("28.6139", str(int(ts("2025-03-01").timestamp())),
         str(int(ts("2025-03-02").timestamp()) - 1)),
    ]
    assert history[0].query["appid"] == KEY
    assert len(server.requests_to(ARCHIVE)) == 1  # both locations' weather in one request
    assert server.requests_to(AQ) == []  # pollution comes from OpenWeatherMap only
    assert result.stats.requests == {"openweathermap": 2, "open_meteo_archive": 1}


def test_window_around_now_uses_history_current_and_forecast(server):
    hour = NOW.floor("h")
    start, end = hour - pd.Timedelta(hours=2), hour + pd.Timedelta(hours=3)
    result = make_source(server).fetch([BERLIN], start, end)
    assert result.failures == {}
    assert list(result.frame["time"]) == list(pd.date_range(start, end, freq="h",
                                                            inclusive="left"))
    assert_pollutants_match(result.frame, BERLIN)
    assert len(server.requests_to(f"{OWM}/history")) == 1
    assert len(server.requests_to(OWM)) == 1
    assert len(server.requests_to(f"{OWM}/forecast")) == 1


def test_documented_variants_coord_list_and_float_aqi(server):
    times = [int(t.timestamp()) for t in pd.date_range("2025-03-01", periods=24, freq="h",
                                                       tz="UTC")]
    server.script(f"{OWM}/history", Reply(200, owm_body(52.52, 13.405, times, coord_as_list=True,
                                                        aqi=4.0)))
    result = make_source(server).fetch([BERLIN], ts("2025-03-01"), ts("2025-03-02"))
    assert result.failures == {}
    assert_pollutants_match(result.frame, BERLIN)


def test_bad_key_fails_every_location_with_one_request_and_no_key_shown(server, caplog):
    caplog.set_level(logging.DEBUG)
    result = make_source(server, key="wrong-key-5f3a9c").fetch([BERLIN, DELHI], ts("2025-03-01"),
                                                                ts("2025-03-02"))
    assert set(result.failures) == {"berlin", "delhi"}
    assert all("HTTP 401: Invalid API key" in err for err in result.failures.values())
    assert result.frame.empty
    assert len(server.requests) == 1  # no retry, no request for delhi, no weather
    assert "wrong-key-5f3a9c" not in " ".join(result.failures.values())
    assert "wrong-key-5f3a9c" not in caplog.text
    assert result.stats.responses == {("openweathermap", "401"): 1}


def test_missing_key_is_a_clear_error(server):
    with pytest.raises(SourceError, match="set OPENWEATHERMAP_API_KEY"):
        make_source(server, key="").fetch([BERLIN], ts("2025-03-01"), ts("2025-03-02"))
    assert server.requests == []


def test_empty_list_fails_the_location_only(server):
    server.script(f"{OWM}/history", Reply(200, {"coord": {"lon": 13.405, "lat": 52.52},
                                                "list": []}))
    result = make_source(server).fetch([BERLIN, DELHI], ts("2025-03-01"), ts("2025-03-02"))
    assert set(result.failures) == {"berlin"}
    assert "empty 'list'" in result.failures["berlin"]
    assert set(result.frame["location_id"]) == {"delhi"}


def _item(**changes):
    item = {"dt": 1740787200, "main": {"aqi": 2},
            "components": {"co": 230.3, "no": 0.1, "no2": 12.0, "o3": 60.1, "so2": 1.2,
                           "pm2_5": 8.5, "pm10": 11.0, "nh3": 0.9}}
    item.update(changes)
    return item


BAD_BODIES = {
    "aqi_text": ({"coord": [13.4, 52.5], "list": [_item(main={"aqi": "moderate"})]},
                 "main.aqi must be a number 1..5, got 'moderate'"),
    "aqi_out_of_scale": ({"coord": [13.4, 52.5], "list": [_item(main={"aqi": 7})]},
                         "main.aqi must be a number 1..5, got 7"),
    "coord_string": ({"coord": "52.5,13.4", "list": [_item()]},
                     "'coord' must be [lon, lat] or {lon, lat}"),
    "coord_missing": ({"list": [_item()]}, "'coord' must be [lon, lat] or {lon, lat}"),
    "list_not_array": ({"coord": [13.4, 52.5], "list": {"dt": 1}},
                       "'list' is missing or not an array"),
    "no_dt": ({"coord": [13.4, 52.5], "list": [_item(dt=None)]}, "needs a numeric 'dt'"),
    "component_text": ({"coord": [13.4, 52.5],
                        "list": [_item(components={"pm2_5": "high"})]},
                       "components.pm2_5 is not a number: 'high'"),
    "components_list": ({"coord": [13.4, 52.5], "list": [_item(components=[1, 2])]},
                        "'components' is not an object"),
    # values stamped at :30 are refused, not floored onto an hour they do not belong to
    "dt_half_past": ({"coord": [13.4, 52.5], "list": [_item(dt=1740787200 + 1800)]},
                     "1 of 1 time(s) are not on the hour"),
    "conflicting_repeated_hour": ({"coord": [13.4, 52.5], "list": [
        _item(), _item(components={"pm2_5": 99.0})]},
        "1 hour(s) appear more than once with different values"),
    "every_component_null": ({"coord": [13.4, 52.5], "list": [
        _item(components={}), _item(dt=1740790800, components={"pm2_5": None})]},
        "every component is null"),
    "dt_overflows": ({"coord": [13.4, 52.5], "list": [_item(dt=1e300)]},
                     "unreadable answer (OverflowError"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_undocumented_shapes_are_rejected_with_the_reason(server, case):
    body, message = BAD_BODIES[case]
    server.script(f"{OWM}/history", Reply(200, body))
    result = make_source(server).fetch([BERLIN, DELHI], ts("2025-03-01"), ts("2025-03-02"))
    assert set(result.failures) == {"berlin"}
    assert message in result.failures["berlin"]
    assert set(result.frame["location_id"]) == {"delhi"}


def test_null_and_absent_components_are_nan():
    frame = parse_air_pollution(
        {"coord": {"lon": 1, "lat": 2},
         "list": [_item(components={"co": None, "pm2_5": 3.5}), _item(dt=1740790800)]},
        "x")
    assert frame["co"].isna().tolist() == [True, False]
    assert frame["pm10"].isna().tolist() == [True, False]
    assert frame["pm2_5"].tolist() == [3.5, 8.5]
    assert list(frame["time"]) == [ts("2025-03-01T00:00"), ts("2025-03-01T01:00")]


def test_non_json_and_429_then_success(server):
    server.script(f"{OWM}/history", Reply(429, {"cod": 429, "message": "Your account is "
                                                "temporary blocked due to exceeding of requests "
                                                "limitation of your subscription type."},
                                          headers={"Retry-After": "0"}))
    server.script(f"{OWM}/history", Reply(200, "<html>Service Unavailable</html>"))
    result = make_source(server).fetch([BERLIN, DELHI], ts("2025-03-01"), ts("2025-03-02"))
    # berlin: 429, then the HTML body (not retried: a clear error); delhi: fine
    assert set(result.failures) == {"berlin"}
    assert "body is not JSON" in result.failures["berlin"]
    assert_pollutants_match(result.frame, DELHI)
    assert result.stats.responses[("openweathermap", "429")] == 1


def test_weather_failure_fails_the_location_and_keeps_no_rows(server):
    server.route(ARCHIVE, lambda seen: Reply(503, {"error": True, "reason": "maintenance"}))
    result = make_source(server).fetch([BERLIN], ts("2025-03-01"), ts("2025-03-02"))
    assert set(result.failures) == {"berlin"}
    assert "HTTP 503: maintenance" in result.failures["berlin"]
    assert result.frame.empty


def test_without_open_meteo_weather_only_pollution_is_filled(server):
    result = make_source(server, weather_from_open_meteo=False).fetch(
        [BERLIN], ts("2025-03-01"), ts("2025-03-02"))
    assert result.failures == {}
    assert result.frame["temperature_2m"].isna().all()
    assert_pollutants_match(result.frame, BERLIN)
    assert server.requests_to(ARCHIVE) == []


def test_a_200_body_echoing_the_request_never_shows_the_key(server, caplog):
    """The error is built while parsing (outside the HTTP client): it must be redacted too."""
    caplog.set_level(logging.DEBUG)
    echo = f"/data/2.5/air_pollution/history?lat=52.52&appid={KEY}"
    server.script(f"{OWM}/history", Reply(200, {"coord": echo, "list": []}))
    result = make_source(server).fetch([BERLIN, DELHI], ts("2025-03-01"), ts("2025-03-02"))
    assert "'coord' must be" in result.failures["berlin"]
    assert "appid=***" in result.failures["berlin"]
    assert KEY not in result.failures["berlin"]
    assert KEY not in caplog.text


def test_a_snippet_cut_through_the_key_shows_no_part_of_it(server):
    # the key starts 100 bytes in: a 120-byte snippet cut before redacting leaves its first half
    body = "x" * 93 + "appid=" + KEY + " was not understood"
    server.script(f"{OWM}/history", Reply(200, body))
    result = make_source(server).fetch([BERLIN], ts("2025-03-01"), ts("2025-03-02"))
    assert "body is not JSON" in result.failures["berlin"]
    assert KEY[:8] not in result.failures["berlin"]
