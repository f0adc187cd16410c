"""Conformal intervals and AQI exceedance probabilities: calibrated, per location, honest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.core.aqi import category_index, category_thresholds
from pipeline.core.intervals import (
    PROBABILITY_PREFIX,
    add_uncertainty,
    calibrate,
    exceedance_next_24h,
    exceedance_probability,
    interval,
    scale_candidates,
    scale_input,
)


def noisy(n: int, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Forecasts and observations whose log errors are normal with ``sigma``."""
    rng = np.random.default_rng(seed)
    predicted = rng.uniform(5, 120, n)
    observed = np.expm1(np.log1p(predicted) + rng.normal(0, sigma, n))
    return predicted, observed


def test_interval_covers_80_percent_of_new_errors_from_the_same_process():
    predicted, observed = noisy(5000, 0.3, seed=1)
    calibration = calibrate(observed, predicted, np.array(["a"] * 5000))
    fresh_pred, fresh_obs = noisy(20000, 0.3, seed=2)
    lower, upper = interval(fresh_pred, calibration["quantiles"])
    inside = (fresh_obs >= lower) & (fresh_obs <= upper)
    assert inside.mean() == pytest.approx(0.8, abs=0.015)
    assert (lower <= fresh_pred).all()
    assert (upper >= fresh_pred).all()


def test_exceedance_probability_matches_the_frequency_it_claims():
    predicted, observed = noisy(5000, 0.4, seed=3)
    quantiles = calibrate(observed, predicted, np.array(["a"] * 5000))["quantiles"]
    fresh_pred, fresh_obs = noisy(40000, 0.4, seed=4)
    probability = exceedance_probability(fresh_pred, quantiles, 35.5)
    for low, high in ((0.1, 0.3), (0.4, 0.6), (0.7, 0.9)):
        chosen = (probability >= low) & (probability < high)
        assert chosen.sum() > 500
        assert (fresh_obs[chosen] >= 35.5).mean() == pytest.approx(probability[chosen].mean(),
                                                                   abs=0.03)


def test_each_location_gets_its_own_spread_and_a_new_one_the_pooled_spread():
    calm_pred, calm_obs = noisy(1000, 0.1, seed=5)
    wild_pred, wild_obs = noisy(1000, 0.6, seed=6)
    calibration = calibrate(np.r_[calm_obs, wild_obs], np.r_[calm_pred, wild_pred],
                            np.array(["calm"] * 1000 + ["wild"] * 1000))
    forecasts = pd.DataFrame({"location_id": ["calm", "wild", "new"], "target": "pm2_5",
                              "horizon": 6, "value": 50.0})
    out = add_uncertainty(forecasts, {"coverage": 0.8, "by_model": {"pm2_5": {"6": calibration}}})
    width = (out["upper"] - out["lower"]).to_numpy()
    assert width[0] < width[2] < width[1]
    assert out[PROBABILITY_PREFIX + "moderate"].between(0, 1).all()
    # a model without calibration gets no interval rather than a made-up one
    bare = add_uncertainty(forecasts.assign(horizon=1), {"by_model": {}})
    assert bare["lower"].isna().all()


@pytest.mark.parametrize("pollutant", ["pm2_5", "pm10", "no2", "o3", "so2", "co"])
def test_category_thresholds_are_where_the_aqi_category_changes(pollutant):
    for k, (name, threshold) in enumerate(category_thresholds(pollutant).items(), start=1):
        assert category_index(pollutant, [threshold * 1.0005])[0] == k, name
        assert category_index(pollutant, [threshold * 0.995])[0] == k - 1, name


def test_next_24h_probability_is_the_largest_over_horizons_within_a_day():
    forecasts = pd.DataFrame({
        "location_id": "a", "target": "pm2_5", "horizon": [1, 6, 24, 48],
        "p_reach_moderate": [0.2, 0.7, 0.5, 0.95],
    })
    out = exceedance_next_24h(forecasts)
    assert out.to_dict("records") == [{"location_id": "a", "target": "pm2_5",
                                       "category": "moderate", "probability": 0.7}]


def restless(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forecasts, observations and a volatility known at the origin: the log errors' spread
    grows in proportion to the volatility (calm and restless hours alternate), as it did
    from year to year on the real data sets (docs/benchmarks.md, "Intervals")."""
    rng = np.random.default_rng(seed)
    volatility = rng.choice([0.02, 0.5], n)
    predicted = rng.uniform(5, 120, n)
    observed = np.expm1(np.log1p(predicted) + rng.normal(0, 0.8 * volatility, n))
    return predicted, observed, volatility


def test_volatility_scaled_intervals_cover_calm_and_restless_hours_alike():
    """Unscaled, one width serves both regimes: calm hours are over-covered and restless ones
    under-covered; scaled by the volatility at the origin (in proportion: the square root
    left calm hours at 100 % and restless ones at 60 %), each regime gets about 80 %."""
    predicted, observed, volatility = restless(6000, seed=7)
    locations = np.array(["a"] * 6000)
    scaled = calibrate(observed, predicted, locations, volatility, "pm2_5_vol24")
    plain = calibrate(observed, predicted, locations)
    assert scaled["scale"]["column"] == "pm2_5_vol24"
    fresh_pred, fresh_obs, fresh_vol = restless(20000, seed=8)
    forecasts = pd.DataFrame({"location_id": "a", "target": "pm2_5", "horizon": 1,
                              "value": fresh_pred, "pm2_5_vol24": fresh_vol})
    for calibration, calm_range, wild_range in ((plain, (0.95, 1.0), (0.5, 0.75)),
                                                (scaled, (0.77, 0.83), (0.77, 0.83))):
        out = add_uncertainty(forecasts, {"by_model": {"pm2_5": {"1": calibration}}})
        inside = (fresh_obs >= out["lower"]) & (fresh_obs <= out["upper"])
        calm = fresh_vol < 0.1
        assert calm_range[0] <= inside[calm].mean() <= calm_range[1]
        assert wild_range[0] <= inside[~calm].mean() <= wild_range[1]


def test_a_scaled_interval_needs_its_scale_column_and_fills_an_unknown_volatility():
    predicted, observed, volatility = restless(2000, seed=9)
    calibration = calibrate(observed, predicted, np.array(["a"] * 2000), volatility,
                            "pm2_5_vol24")
    uncertainty = {"by_model": {"pm2_5": {"1": calibration}}}
    forecasts = pd.DataFrame({"location_id": "a", "target": "pm2_5", "horizon": 1,
                              "value": [40.0, 40.0]})
    with pytest.raises(ValueError, match="pm2_5_vol24"):
        add_uncertainty(forecasts, uncertainty)
    # a volatility unknown at the origin (a gap) takes the calibration window's median
    out = add_uncertainty(forecasts.assign(pm2_5_vol24=[np.nan, calibration["scale"]["fill"]]),
                          uncertainty)
    assert out["lower"].iloc[0] == out["lower"].iloc[1]
    assert out["upper"].iloc[0] == out["upper"].iloc[1]


def seasons(n: int, seed: int, wild_share: float):
    """A window of hourly rows over a year whose log errors follow the relative spread of the
    last days (``std72 / mean72``), in calm and wild spells of about a month, while the last
    day's volatility says nothing about them."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC").to_numpy()
    spell = (np.arange(n) // 720) % 10 < round(wild_share * 10)
    spread = np.where(spell, 0.9, 0.15) * rng.uniform(0.8, 1.25, n)
    mean72 = rng.uniform(5, 60, n)
    predicted = rng.uniform(5, 120, n)
    observed = np.expm1(np.log1p(predicted) + rng.normal(0, 0.35 * spread, n))
    rows = pd.DataFrame({"pm2_5_std72": spread * mean72, "pm2_5_mean72": mean72,
                         "pm2_5_vol24": rng.uniform(0.05, 0.5, n)})
    return times, predicted, observed, rows


def test_the_scale_that_holds_from_month_to_month_is_chosen_and_holds_next_year():
    """Calibrated on a year with few wild spells, applied to a year with many: the day's
    volatility (the default) carries the calm year's width over and under-covers; the relative
    spread of the last 3 days, chosen because each month of the window is covered alike,
    keeps about 80 %."""
    times, predicted, observed, rows = seasons(8760, seed=11, wild_share=0.2)
    candidates = scale_candidates("pm2_5", rows.columns)
    assert [c["column"] for c in candidates] == ["pm2_5_vol24", "pm2_5_std72"]
    inputs = [scale_input(c, lambda col: rows[col].to_numpy()) for c in candidates]
    chosen = calibrate(observed, predicted, np.array(["a"] * 8760),
                       scales=list(zip(candidates, inputs, strict=True)), times=times)
    assert chosen["scale"]["column"] == "pm2_5_std72"
    assert chosen["scale"]["per"] == "pm2_5_mean72"
    deviation = {c["column"]: c["block_deviation"] for c in chosen["scale_choice"]}
    assert deviation["pm2_5_std72"] < deviation["pm2_5_vol24"]
    default = calibrate(observed, predicted, np.array(["a"] * 8760),
                        scales=list(zip(candidates, inputs, strict=True)))  # no times: no choice
    assert default["scale"]["column"] == "pm2_5_vol24"
    _, fresh_pred, fresh_obs, fresh = seasons(8760, seed=12, wild_share=0.6)
    forecasts = fresh.assign(location_id="a", target="pm2_5", horizon=24, value=fresh_pred)
    coverage = {}
    for name, calibration in (("chosen", chosen), ("default", default)):
        out = add_uncertainty(forecasts, {"by_model": {"pm2_5": {"24": calibration}}})
        coverage[name] = ((fresh_obs >= out["lower"]) & (fresh_obs <= out["upper"])).mean()
    assert coverage["chosen"] == pytest.approx(0.8, abs=0.02)
    assert coverage["default"] < 0.75
    with pytest.raises(ValueError, match="pm2_5_mean72"):
        add_uncertainty(forecasts.drop(columns="pm2_5_mean72"),
                        {"by_model": {"pm2_5": {"24": chosen}}})
