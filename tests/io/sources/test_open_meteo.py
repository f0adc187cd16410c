"""Open-Meteo source against a local server replaying the documented response shapes."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from pipeline.config import Location
from pipeline.config import OpenMeteoSource as OpenMeteoConfig
from pipeline.core.validation import validate_forecasts
from pipeline.io.sources.http import ResponseFormatError
from pipeline.io.sources.open_meteo import (
    AIR_QUALITY_VARIABLES,
    WEATHER_VARIABLES,
    OpenMeteoSource,
    parse_hourly,
)
from pipeline.schema import COLUMNS, FORECAST_COLUMNS, TIME_DTYPE
from pipeline.settings import Settings
from tests.replay_server import (
    ReplayServer,
    Reply,
    deep_json,
    hours,
    open_meteo_handler,
    open_meteo_location,
    truth,
)

AQ, FORECAST, ARCHIVE = "/v1/air-quality", "/v1/forecast", "/v1/archive"
PREVIOUS = "/previous-runs/v1/forecast"
NOW = pd.Timestamp("2025-03-20T12:34", tz="UTC")
BERLIN = Location(id="berlin", name="Berlin", latitude=52.52, longitude=13.405)
DELHI = Location(id="delhi", name="Delhi", latitude=28.6139, longitude=77.209)
QUITO = Location(id="quito", name="Quito", latitude=-0.1807, longitude=-78.4678)
API_NAME = {**{v: k for k, v in AIR_QUALITY_VARIABLES.items()}, **WEATHER_VARIABLES}


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


@pytest.fixture
def server():
    with ReplayServer() as srv:
        for path in (AQ, FORECAST, ARCHIVE, PREVIOUS):
            srv.route(path, open_meteo_handler())
        yield srv


def make_source(srv: ReplayServer, timeout: float = 2.0, **config) -> OpenMeteoSource:
    settings = Settings(
        open_meteo_air_quality_url=srv.url(AQ),
        open_meteo_forecast_url=srv.url(FORECAST),
        open_meteo_archive_url=srv.url(ARCHIVE),
        open_meteo_previous_runs_url=srv.url(PREVIOUS),
        http_timeout_s=timeout,
    )
    config = {"backoff_s": 0.01, "max_retries": 2, "requests_per_second": 100, **config}
    return OpenMeteoSource(OpenMeteoConfig(**config), settings, now=lambda: NOW)


def expected_value(column: str, loc: Location, time: pd.Timestamp) -> float:
    return truth(API_NAME[column], round(loc.latitude, 4), int(time.timestamp()))


def assert_matches_provider(frame: pd.DataFrame, loc: Location) -> None:
    rows = frame[frame["location_id"] == loc.id]
    assert len(rows) > 0
    for column in API_NAME:
        want = [expected_value(column, loc, t) for t in rows["time"]]
        np.testing.assert_allclose(rows[column].to_numpy(), want, rtol=1e-9, err_msg=column)


def test_several_locations_per_request_give_canonical_rows(server):
    source = make_source(server, locations_per_request=2)
    start, end = ts("2025-03-01T05:00"), ts("2025-03-03T00:00")
    result = source.fetch([BERLIN, DELHI, QUITO], start, end)

    assert result.failures == {}
    assert list(result.frame.columns) == list(COLUMNS)
    assert str(result.frame["time"].dtype) == TIME_DTYPE
    assert len(result.frame) == 3 * 43
    for loc in (BERLIN, DELHI, QUITO):
        assert_matches_provider(result.frame, loc)
        times = result.frame.loc[result.frame["location_id"] == loc.id, "time"]
        assert times.min() == start
        assert times.max() == end - pd.Timedelta(hours=1)
    # two locations in the first request, one in the second; old window -> archive for weather
    aq = server.requests_to(AQ)
    assert [r.query["latitude"] for r in aq] == ["52.5200,28.6139", "-0.1807"]
    assert aq[0].query["hourly"] == ",".join(AIR_QUALITY_VARIABLES)
    assert {r.query["timezone"] for r in server.requests} == {"GMT"}
    assert {r.query["timeformat"] for r in server.requests} == {"unixtime"}
    assert (aq[0].query["start_date"], aq[0].query["end_date"]) == ("2025-03-01", "2025-03-02")
    weather = server.requests_to(ARCHIVE)
    assert len(weather) == 2
    assert server.requests_to(FORECAST) == []
    assert weather[0].query["wind_speed_unit"] == "ms"
    assert weather[0].query["temperature_unit"] == "celsius"
    assert result.stats.requests == {"open_meteo_air_quality": 2, "open_meteo_archive": 2}
    assert result.stats.responses[("open_meteo_archive", "200")] == 2


def test_recent_weather_from_forecast_older_from_archive(server):
    # boundary = 2025-03-20 (today) - 5 days = 2025-03-15
    result = make_source(server).fetch([BERLIN], ts("2025-03-13"), ts("2025-03-20T06:00"))
    assert result.failures == {}
    archive, forecast = server.requests_to(ARCHIVE), server.requests_to(FORECAST)
    assert [(r.query["start_date"], r.query["end_date"]) for r in archive] == [
        ("2025-03-13", "2025-03-14")]
    assert [(r.query["start_date"], r.query["end_date"]) for r in forecast] == [
        ("2025-03-15", "2025-03-20")]
    assert len(result.frame) == 7 * 24 + 6
    assert result.frame["temperature_2m"].notna().all()
    assert_matches_provider(result.frame, BERLIN)


def test_window_is_trimmed_to_the_hour(server):
    result = make_source(server).fetch([BERLIN, DELHI], ts("2025-03-01T05:00"),
                                       ts("2025-03-01T08:00"))
    assert result.frame.groupby("location_id").size().to_dict() == {"berlin": 3, "delhi": 3}
    assert sorted(set(result.frame["time"])) == [ts("2025-03-01T05:00"), ts("2025-03-01T06:00"),
                                                 ts("2025-03-01T07:00")]


def test_long_windows_are_cut_into_provider_sized_requests(server):
    result = make_source(server, max_days_per_request=10).fetch([BERLIN], ts("2025-01-01"),
                                                                ts("2025-01-26"))
    assert [(r.query["start_date"], r.query["end_date"]) for r in server.requests_to(AQ)] == [
        ("2025-01-01", "2025-01-10"), ("2025-01-11", "2025-01-20"), ("2025-01-21", "2025-01-25")]
    assert len(result.frame) == 25 * 24
    assert not result.frame.duplicated(["location_id", "time"]).any()


def test_nulls_and_missing_hours_become_nan_rows(server):
    gap_hours = {ts("2025-03-01T02:00"), ts("2025-03-01T03:00")}

    def values(var, lat, unix_s):
        t = pd.Timestamp(unix_s, unit="s", tz="UTC")
        return None if (var == "pm2_5" and t.hour in (5, 6)) else truth(var, lat, unix_s)

    server.route(AQ, open_meteo_handler(values))
    # the weather answer skips two hours entirely (a gap in the time array)
    times = [t for t in hours("2025-03-01", "2025-03-01")
             if pd.Timestamp(t, unit="s", tz="UTC") not in gap_hours]
    server.script(ARCHIVE, Reply(200, open_meteo_location(
        BERLIN.latitude, BERLIN.longitude, list(WEATHER_VARIABLES), times,
        wind_speed_unit="ms")))
    result = make_source(server).fetch([BERLIN], ts("2025-03-01"), ts("2025-03-02"))

    frame = result.frame.set_index("time")
    assert len(frame) == 24
    assert result.failures == {}
    assert frame["pm2_5"].isna().sum() == 2
    assert frame.loc[[ts("2025-03-01T05:00"), ts("2025-03-01T06:00")], "pm2_5"].isna().all()
    assert frame.loc[sorted(gap_hours), "temperature_2m"].isna().all()
    assert frame["temperature_2m"].notna().sum() == 22
    assert frame["pm10"].notna().all()


def test_iso8601_times_with_an_offset_and_no_elevation(server):
    times = hours("2025-03-01", "2025-03-01")
    body = open_meteo_location(BERLIN.latitude, BERLIN.longitude, list(AIR_QUALITY_VARIABLES),
                               times, timeformat="iso8601")
    # the same hours as local wall time (UTC+1), as the API answers for timezone=Europe/Berlin
    body["utc_offset_seconds"] = 3600
    body["hourly"]["time"] = [(pd.Timestamp(t, unit="s") + pd.Timedelta(hours=1))
                              .strftime("%Y-%m-%dT%H:%M") for t in times]
    del body["elevation"]
    server.script(AQ, Reply(200, body))
    result = make_source(server).fetch([BERLIN], ts("2025-03-01"), ts("2025-03-02"))
    assert result.failures == {}
    assert_matches_provider(result.frame, BERLIN)


def test_wind_speed_in_km_per_hour_is_converted(server):
    times = hours("2025-03-01", "2025-03-01")
    server.script(ARCHIVE, Reply(200, open_meteo_location(
        BERLIN.latitude, BERLIN.longitude, list(WEATHER_VARIABLES), times,
        wind_speed_unit="kmh")))
    result = make_source(server).fetch([BERLIN], ts("2025-03-01"), ts("2025-03-02"))
    assert_matches_provider(result.frame, BERLIN)  # truth is in m/s; the body was in km/h


def _aq_body(loc=BERLIN, **changes):
    body = open_meteo_location(loc.latitude, loc.longitude, list(AIR_QUALITY_VARIABLES),
                               hours("2025-03-01", "2025-03-01"))
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = body
        for key in parents:
            node = node[key]
        node[leaf] = value
    return body


BAD_ANSWERS = {
    "lengths_differ": (Reply(200, _aq_body(**{"hourly.pm10": [1.0] * 23})),
                       "hourly.pm10 has 23 values but hourly.time has 24"),
    "unknown_unit": (Reply(200, _aq_body(**{"hourly_units.nitrogen_dioxide": "ppb"})),
                     None),  # ppb is convertible for NO2: not an error, checked below
    "unit_nonsense": (Reply(200, _aq_body(**{"hourly_units.pm2_5": "grains/ft³"})),
                      "hourly_units.pm2_5: pm2_5: unknown unit 'grains/ft³'"),
    "no_units": (Reply(200, {k: v for k, v in _aq_body().items() if k != "hourly_units"}),
                 "no 'hourly_units' object"),
    "missing_variable": (Reply(200, _aq_body(**{"hourly.ozone": None})),
                         "hourly.ozone is missing or not a list"),
    "not_json": (Reply(200, "<html>upstream timed out</html>"), "body is not JSON"),
    "truncated_json": (Reply(200, b'[{"latitude": 52.5, "hourly": {"time": [17'),
                       "body is not JSON"),
    "array_of_two_for_one": (Reply(200, [_aq_body(), _aq_body()]),
                             "answered 2 location(s) for 1 requested"),
    "text_value": (Reply(200, _aq_body(**{"hourly.pm2_5": ["n/a"] * 24})),
                   "hourly.pm2_5 holds a non-numeric value 'n/a'"),
    "unknown_time_format": (Reply(200, _aq_body(**{"hourly_units.time": "rfc2822"})),
                            "unknown time format 'rfc2822'"),
    "empty": (Reply(200, _aq_body(**{"hourly": {"time": [], **{
        v: [] for v in AIR_QUALITY_VARIABLES}}})), "returned no hours inside"),
    # hostile or broken providers: each fails its location, never the step
    "times_at_half_past": (Reply(200, _aq_body(**{"hourly.time": [
        t + 1800 for t in hours("2025-03-01", "2025-03-01")]})),
        "24 of 24 time(s) are not on the hour"),
    "conflicting_repeated_hour": (Reply(200, _aq_body(**{
        "hourly.time": hours("2025-03-01", "2025-03-01")[:23]
        + [hours("2025-03-01", "2025-03-01")[5]]})),
        "1 hour(s) appear more than once with different values"),
    "offset_as_text": (Reply(200, _aq_body(utc_offset_seconds="3600s")),
                       "utc_offset_seconds must be a whole number of seconds, got '3600s'"),
    "offset_impossible": (Reply(200, _aq_body(utc_offset_seconds=90_000)),
                          "utc_offset_seconds 90000 is not a real time-zone offset"),
    "every_value_null": (Reply(200, _aq_body(**{f"hourly.{v}": [None] * 24
                                                for v in AIR_QUALITY_VARIABLES})),
                         "every value of"),
    "deep_json": (Reply(200, deep_json()), "nested too deeply"),
    # any exception while reading fails the location, with what it was
    "hourly_time_is_nested": (Reply(200, _aq_body(**{"hourly.time": [[[[1]]]] * 24})),
                              "location(s) berlin: unreadable answer (ValueError"),
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_a_bad_answer_fails_only_its_location(server, case):
    reply, message = BAD_ANSWERS[case]
    server.script(AQ, reply)  # the first request (berlin alone) gets the bad answer
    result = make_source(server, locations_per_request=1).fetch(
        [BERLIN, DELHI], ts("2025-03-01"), ts("2025-03-02"))
    if message is None:  # a convertible unit is converted, not refused
        assert result.failures == {}
        no2 = result.frame.loc[result.frame["location_id"] == "berlin", "no2"].to_numpy()
        want = [expected_value("no2", BERLIN, t) * 46.0055 / 24.45
                for t in result.frame.loc[result.frame["location_id"] == "berlin", "time"]]
        np.testing.assert_allclose(no2, want)
        return
    assert set(result.failures) == {"berlin"}
    assert message in result.failures["berlin"]
    assert set(result.frame["location_id"]) == {"delhi"}  # no berlin row at all
    assert_matches_provider(result.frame, DELHI)


def test_one_bad_location_in_a_shared_request_does_not_sink_the_others(server):
    good = open_meteo_handler()

    def poisoned(seen):
        reply = good(seen)
        if "28.6139" in seen.query["latitude"]:  # any request including delhi
            items = reply.body if isinstance(reply.body, list) else [reply.body]
            for item in items:
                if item["latitude"] == 28.6139:
                    item["hourly"]["pm2_5"] = item["hourly"]["pm2_5"][:-1]
        return reply

    server.route(AQ, poisoned)
    result = make_source(server, locations_per_request=3).fetch(
        [BERLIN, DELHI, QUITO], ts("2025-03-01"), ts("2025-03-02"))
    assert set(result.failures) == {"delhi"}
    assert "hourly.pm2_5 has 23 values" in result.failures["delhi"]
    assert set(result.frame["location_id"]) == {"berlin", "quito"}
    assert len(server.requests_to(AQ)) == 1 + 3  # the shared request, then one by one
    assert_matches_provider(result.frame, QUITO)


def test_rejected_request_is_not_retried_and_quotes_the_reason(server):
    reason = "Parameter 'start_date' is out of allowed range from 2013-01-01 to 2025-03-27"
    server.route(AQ, lambda seen: Reply(400, {"error": True, "reason": reason}))
    result = make_source(server, locations_per_request=2).fetch(
        [BERLIN, DELHI], ts("2025-03-01"), ts("2025-03-02"))
    assert set(result.failures) == {"berlin", "delhi"}
    assert all(reason in err and "HTTP 400" in err for err in result.failures.values())
    assert result.frame.empty
    assert len(server.requests_to(AQ)) == 3  # group, then each alone; never retried
    assert server.requests_to(ARCHIVE) == []  # nothing else asked for failed locations


def test_429_then_500_then_success(server):
    server.script(AQ, Reply(429, {"error": True, "reason": "Too many concurrent requests"},
                            headers={"Retry-After": "0"}),
                  Reply(500, "Internal Server Error"))
    result = make_source(server).fetch([BERLIN], ts("2025-03-01"), ts("2025-03-02"))
    assert result.failures == {}
    assert_matches_provider(result.frame, BERLIN)
    assert result.stats.responses[("open_meteo_air_quality", "429")] == 1
    assert result.stats.responses[("open_meteo_air_quality", "500")] == 1
    assert result.stats.responses[("open_meteo_air_quality", "200")] == 1


def test_timeouts_fail_the_location_after_retries(server):
    server.script(ARCHIVE, *[Reply(200, {}, delay_s=0.8)] * 2)
    result = make_source(server, timeout=0.3, max_retries=1, locations_per_request=1).fetch(
        [BERLIN, DELHI], ts("2025-03-01"), ts("2025-03-02"))
    assert set(result.failures) == {"berlin"}
    assert "timeout" in result.failures["berlin"]
    assert set(result.frame["location_id"]) == {"delhi"}
    assert result.stats.responses[("open_meteo_archive", "timeout")] == 2


def test_parse_accepts_object_or_array_and_rejects_other_shapes():
    body = _aq_body()
    one = parse_hourly(body, [BERLIN], AIR_QUALITY_VARIABLES, "p")
    many = parse_hourly([body, _aq_body(DELHI)], [BERLIN, DELHI], AIR_QUALITY_VARIABLES, "p")
    assert len(one["berlin"]) == 24
    assert set(many) == {"berlin", "delhi"}
    with pytest.raises(ResponseFormatError, match="error in response: 'No data is available"):
        parse_hourly({"error": True, "reason": "No data is available for this location"},
                     [BERLIN], AIR_QUALITY_VARIABLES, "p")
    with pytest.raises(ResponseFormatError, match="expected a JSON object or array, got str"):
        parse_hourly("hello", [BERLIN], AIR_QUALITY_VARIABLES, "p")
    with pytest.raises(ResponseFormatError, match="hourly.time contains null"):
        parse_hourly(_aq_body(**{"hourly.time": [None] * 24}), [BERLIN], AIR_QUALITY_VARIABLES,
                     "p")


def test_exact_repeats_collapse_and_unsorted_hours_are_sorted(server):
    times = hours("2025-03-01", "2025-03-01")
    body = _aq_body(**{"hourly.time": list(reversed(times)) + [times[3]]})
    for variable in AIR_QUALITY_VARIABLES:
        series = [truth(variable, BERLIN.latitude, t) for t in reversed(times)]
        body["hourly"][variable] = series + [truth(variable, BERLIN.latitude, times[3])]
    server.script(AQ, Reply(200, body))
    result = make_source(server).fetch([BERLIN], ts("2025-03-01"), ts("2025-03-02"))
    assert result.failures == {}
    assert len(result.frame) == 24
    assert_matches_provider(result.frame, BERLIN)


def test_a_trickling_server_fails_its_location_within_the_deadline(server):
    """One byte per 0.05 s: the old per-chunk check held each attempt for minutes."""
    body = _aq_body()
    server.script(AQ, *[Reply(200, body, trickle_s=0.05)] * 2)
    started = time.monotonic()
    result = make_source(server, timeout=0.5, max_retries=1, locations_per_request=1).fetch(
        [BERLIN, DELHI], ts("2025-03-01"), ts("2025-03-02"))
    assert time.monotonic() - started < 4.0
    assert set(result.failures) == {"berlin"}
    assert "timeout" in result.failures["berlin"]
    assert_matches_provider(result.frame, DELHI)


# ------------------------------------------------------------------ weather forecasts


def test_past_hours_get_what_was_forecast_one_and_two_days_before(server):
    """The previous-runs API: honest training inputs, known no earlier than they could be."""
    result = make_source(server, locations_per_request=2).fetch_forecasts(
        [BERLIN, DELHI], ts("2025-03-01"), ts("2025-03-02"))
    assert result.failures == {}
    frame = result.frame
    assert list(frame.columns) == list(FORECAST_COLUMNS)
    assert len(frame) == 2 * 24 * 2  # locations x hours x (1 and 2 days before)
    previous = server.requests_to(PREVIOUS)
    assert len(previous) == 2  # day 1 and day 2, both locations in each request
    assert previous[0].query["hourly"].split(",")[0] == "temperature_2m_previous_day1"
    assert previous[0].query["wind_speed_unit"] == "ms"
    assert server.requests_to(FORECAST) == []  # the window is in the past: no current run
    lead = (frame["time"] - frame["issue_time"]) / pd.Timedelta(hours=1)
    assert sorted(lead.unique()) == [24 - 8, 48 - 8]  # the default 8-hour publication delay
    row = frame[(frame["location_id"] == "berlin") & (lead == 16)].iloc[5]
    unix = int(row["time"].timestamp())
    assert row["temperature_2m"] == truth("temperature_2m_previous_day1", 52.52, unix)
    assert row["wind_speed_10m"] == truth("wind_speed_10m_previous_day1", 52.52, unix)
    assert validate_forecasts(frame, ["berlin", "delhi"]).quarantine.empty


def test_a_window_reaching_the_present_stores_the_current_run(server):
    result = make_source(server, forecast_hours=36).fetch_forecasts(
        [BERLIN], ts("2025-03-20T10:00"), ts("2025-03-20T13:00"))
    frame = result.frame
    current = frame[frame["issue_time"] == ts("2025-03-20T13:00")]  # fetched 12:34: known 13:00
    assert list(current["time"]) == list(pd.date_range("2025-03-20T14:00", periods=36, freq="h",
                                                       tz="UTC"))
    request = server.requests_to(FORECAST)[0].query
    assert (request["start_date"], request["end_date"]) == ("2025-03-20", "2025-03-22")
    assert current["cloud_cover"].iloc[0] == truth(
        "cloud_cover", 52.52, int(ts("2025-03-20T14:00").timestamp()))
    assert len(frame) == len(current) + 3 * 2  # and the previous runs of the window's 3 hours


def test_hours_before_the_previous_runs_archive_are_no_data_not_an_error(server):
    server.route(PREVIOUS, open_meteo_handler(lambda var, lat, t: None))
    result = make_source(server).fetch_forecasts([BERLIN], ts("2023-03-01"), ts("2023-03-02"))
    assert result.frame.empty
    assert result.failures["berlin"].endswith("no data")


def test_forecasts_can_be_switched_off(server):
    result = make_source(server, forecasts=False).fetch_forecasts(
        [BERLIN], ts("2025-03-01"), ts("2025-03-02"))
    assert result.frame.empty
    assert server.requests == []
