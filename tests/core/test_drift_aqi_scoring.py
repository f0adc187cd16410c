"""PSI, US AQI and scores on known values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.core.aqi import aqi, category
from pipeline.core.drift import drift_report, psi, reference_distribution
from pipeline.core.scoring import score, skill
from pipeline.schema import ppb_to_ugm3


def test_psi_is_small_for_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(1)
    train = pd.DataFrame({"pm2_5": rng.gamma(2, 10, 20_000), "hour_sin": rng.normal(size=20_000)})
    ref = reference_distribution(train, ["pm2_5", "hour_sin"], bins=10)
    assert "hour_sin" not in ref  # calendar features are not monitored
    assert psi(ref["pm2_5"], rng.gamma(2, 10, 5_000)) < 0.02
    assert psi(ref["pm2_5"], rng.gamma(2, 10, 5_000) * 1.8) > 0.25
    report = drift_report(ref, pd.DataFrame({"pm2_5": rng.gamma(2, 10, 500) * 2}), 0.25, 0.3)
    assert report["detected"]
    assert report["drifted_features"] == ["pm2_5"]


def seasonal_year(rng, start: str, end: str, shift: float = 1.0) -> pd.DataFrame:
    """Hourly temperature with a yearly cycle and PM2.5 that follows it (heating season)."""
    time = pd.Series(pd.date_range(start, end, freq="h", inclusive="left", tz="UTC"))
    season = np.cos(2 * np.pi * (time.dt.day_of_year.to_numpy() - 15) / 365.25)
    temperature = 10 - 12 * season + rng.normal(0, 3, len(time))
    pm2_5 = (15 + 12 * season) * rng.gamma(4, 0.25, len(time)) * shift
    return pd.DataFrame({"time": time, "temperature_2m": temperature, "pm2_5": pm2_5})


def test_december_is_compared_with_the_same_season_not_the_whole_training_year():
    """Training Jan-Oct, recent window in December: winter is not drift, an emission shift is."""
    rng = np.random.default_rng(3)
    train = seasonal_year(rng, "2025-01-01", "2025-11-01")
    features = ["temperature_2m", "pm2_5"]
    ref = reference_distribution(train, features, bins=10, months=train["time"].dt.month)
    december = seasonal_year(rng, "2025-12-10", "2025-12-24")

    seasonal = drift_report(ref, december, 0.25, 0.3)
    whole_year = drift_report(ref, december.drop(columns="time"), 0.25, 0.3)

    assert whole_year["detected"]  # the old comparison: every winter looks like drift
    assert not whole_year["seasonal"]
    assert not seasonal["detected"]
    assert seasonal["reference_months"] == [1]  # December's season in Jan-Oct training
    assert seasonal["recent_months"] == [12]
    shifted = seasonal_year(rng, "2025-12-10", "2025-12-24", shift=1.8)
    assert drift_report(ref, shifted, 0.25, 0.3)["drifted_features"] == ["pm2_5"]


def test_a_season_training_barely_covers_falls_back_to_the_whole_reference():
    rng = np.random.default_rng(4)
    train = seasonal_year(rng, "2025-03-01", "2025-08-01")  # spring and summer only
    ref = reference_distribution(train, ["pm2_5"], bins=10, months=train["time"].dt.month)
    report = drift_report(ref, seasonal_year(rng, "2025-11-01", "2025-11-15"), 0.25, 0.3)
    assert report["reference_months"] == []
    assert not report["seasonal"]


@pytest.mark.parametrize(
    ("pollutant", "value", "expected_aqi", "expected_category"),
    [
        ("pm2_5", 5.0, 28, "good"),
        ("pm2_5", 35.4, 100, "moderate"),
        ("pm2_5", 55.5, 151, "unhealthy"),
        ("pm2_5", 150.0, 225, "very_unhealthy"),
        ("pm10", 100.0, 73, "moderate"),
        ("no2", float(ppb_to_ugm3(100.0, "no2")), 100, "moderate"),
        ("o3", float(ppb_to_ugm3(80.0, "o3")), 133, "unhealthy_for_sensitive_groups"),
    ],
)
def test_us_aqi_breakpoints(pollutant, value, expected_aqi, expected_category):
    assert aqi(pollutant, [value])[0] == expected_aqi
    assert category(pollutant, [value]).iloc[0] == expected_category


def test_scores_against_persistence():
    truth = np.array([10.0, 20.0, 30.0, 40.0])
    s = score("pm2_5", truth, truth + 1, truth + 4, truth + 2)
    assert s["mae"] == 1.0
    assert s["persistence_mae"] == 4.0
    assert s["skill"] == pytest.approx(0.75)
    assert s["skill_vs_seasonal"] == pytest.approx(0.5)
    assert skill(5.0, 4.0) < 0
