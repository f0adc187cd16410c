"""The real provider APIs (internet): run with ``pytest -m network``; never in CI.

They check that the documented shapes the replay server imitates are still
what the providers send.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest

from pipeline.config import Location
from pipeline.config import OpenMeteoSource as OpenMeteoConfig
from pipeline.config import OpenWeatherMapSource as OwmConfig
from pipeline.core.validation import validate, validate_forecasts
from pipeline.io.sources.open_meteo import OpenMeteoSource
from pipeline.io.sources.openweathermap import OpenWeatherMapSource
from pipeline.settings import Settings

pytestmark = pytest.mark.network

BERLIN = Location(id="berlin", name="Berlin", latitude=52.52, longitude=13.405)
DELHI = Location(id="delhi", name="Delhi", latitude=28.6139, longitude=77.209)


def _check(result, locations, hours):
    assert result.failures == {}
    assert result.frame.groupby("location_id").size().to_dict() == dict.fromkeys(
        [loc.id for loc in locations], hours)
    checked = validate(result.frame, known_locations=[loc.id for loc in locations])
    assert len(checked.quarantine) == 0, checked.quarantine["reason"].tolist()
    for column in ("pm2_5", "no2", "temperature_2m", "wind_speed_10m"):
        assert result.frame[column].notna().mean() > 0.8, column


def test_open_meteo_recent_hours_for_two_locations_in_one_request():
    end = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(hours=2)
    start = end - pd.Timedelta(hours=36)
    result = OpenMeteoSource(OpenMeteoConfig(), Settings.from_env()).fetch(
        [BERLIN, DELHI], start, end)
    _check(result, [BERLIN, DELHI], 36)
    assert result.stats.requests == {"open_meteo_air_quality": 1, "open_meteo_forecast": 1}


def test_open_meteo_archive_window():
    end = pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=30)
    start = end - pd.Timedelta(days=2)
    result = OpenMeteoSource(OpenMeteoConfig(), Settings.from_env()).fetch([BERLIN], start, end)
    _check(result, [BERLIN], 48)
    assert "open_meteo_archive" in result.stats.requests


def test_open_meteo_weather_forecasts_past_and_current():
    """Previous-runs values for past hours and the current run, in the shapes the replay
    server imitates, valid as stored forecasts."""
    now = pd.Timestamp.now(tz="UTC")
    end = now.floor("h")
    start = end - pd.Timedelta(hours=24)
    result = OpenMeteoSource(OpenMeteoConfig(), Settings.from_env()).fetch_forecasts(
        [BERLIN], start, end)
    assert result.failures == {}
    frame = result.frame
    assert validate_forecasts(frame, ["berlin"]).quarantine.empty
    lead = (frame["time"] - frame["issue_time"]) / pd.Timedelta(hours=1)
    assert {16, 40} <= set(lead.unique())  # previous days 1 and 2, 8 h publication delay
    current = frame[frame["issue_time"] == now.ceil("h")]
    assert len(current) == 48
    for column in ("temperature_2m", "wind_speed_10m", "cloud_cover"):
        assert frame[column].notna().mean() > 0.9, column
    assert result.stats.requests == {"open_meteo_previous_runs": 2, "open_meteo_forecast": 1}


@pytest.mark.skipif(not os.environ.get("OPENWEATHERMAP_API_KEY"),
                    reason="OPENWEATHERMAP_API_KEY not set")
def test_openweathermap_history():
    end = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(hours=3)
    start = end - pd.Timedelta(hours=24)
    result = OpenWeatherMapSource(OwmConfig(), Settings.from_env()).fetch([BERLIN], start, end)
    _check(result, [BERLIN], 24)
