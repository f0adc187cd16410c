"""The rolling-origin backtest: every origin of the window once, and never a look ahead."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import FeatureConfig
from pipeline.core.backtest import Window, forecast, refit_origins, score_tables
from pipeline.core.features import FeatureSpec, build_features, location_codes
from pipeline.core.keys import ModelKey
from pipeline.core.models import fit_one
from pipeline.forecaster import Champion, Inputs
from pipeline.forecaster import forecast as forecast_rows
from pipeline.schema import VALUE_COLUMNS, WEATHER

TZ = {"a": "Europe/Berlin", "b": "Asia/Kolkata"}
HORIZONS = (1, 6)
CONFIG = FeatureConfig(lags=[1, 2, 24], rolling_windows=[3, 24])
SPEC = FeatureSpec(("pm2_5",), HORIZONS, CONFIG)
SETTINGS = {"form": "log_change", "loss": "squared_error", "max_iter": 15}


def raw(days: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = pd.date_range("2025-03-01", periods=days * 24, freq="h", tz="UTC")
    frames = []
    for loc in TZ:
        df = pd.DataFrame({c: rng.uniform(1, 50, len(times)) for c in VALUE_COLUMNS})
        df["wind_direction_10m"] = rng.uniform(0, 360, len(times))
        df.insert(0, "time", times)
        df.insert(0, "location_id", loc)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def runs(data: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    """Weather-forecast runs every 6 hours, 48 hours ahead, over the data's span."""
    rng = np.random.default_rng(seed)
    rows = []
    for loc in TZ:
        for issue in pd.date_range(data["time"].min(), data["time"].max(), freq="6h"):
            part = pd.DataFrame({c: rng.uniform(1, 50, 48) for c in WEATHER})
            part.insert(0, "time", issue + pd.to_timedelta(np.arange(1, 49), unit="h"))
            part.insert(0, "issue_time", issue)
            part.insert(0, "location_id", loc)
            rows.append(part)
    return pd.concat(rows, ignore_index=True)


def backtest(data: pd.DataFrame, window: Window, every: pd.Timedelta | None,
             forecasts: pd.DataFrame | None = None) -> pd.DataFrame:
    frame = build_features(data, SPEC, TZ, location_codes(list(TZ)), forecasts=forecasts)
    features = [c for c in frame.columns
                if c.startswith(("pm2_5", "fc_")) or c.endswith(("_sin", "_cos"))]

    metadata = {"version": "test", "targets": ["pm2_5"], "horizons": list(HORIZONS),
                "features": features, "params": {"features": CONFIG.model_dump()},
                "location_codes": location_codes(list(TZ))}

    def rows_of(part, begin):
        champion = Champion.from_parts({(key := ModelKey("pm2_5", h)): fit_one(
            frame, features, key.target, key.horizon, SETTINGS, begin) for h in HORIZONS},
            metadata)
        return forecast_rows(champion, Inputs.from_frame(champion, part)).frame()

    return forecast(frame, window, HORIZONS, rows_of, refit_origins(window, HORIZONS, every))


WINDOW = Window(pd.Timestamp("2025-03-20", tz="UTC"), pd.Timestamp("2025-03-27", tz="UTC"))


@pytest.mark.slow  # fits small models
@pytest.mark.train
def test_every_target_hour_of_the_window_is_forecast_once_per_horizon_and_location():
    out = backtest(raw(), WINDOW, pd.Timedelta(days=2))
    hours = pd.date_range(WINDOW.start, WINDOW.end, freq="h", inclusive="left")
    for (location, horizon), part in out.groupby(["location_id", "horizon"]):
        assert list(part["target_time"]) == list(hours), (location, horizon)
        assert (part["target_time"] - part["origin"] == pd.Timedelta(hours=horizon)).all()
    # each forecast comes from the model refitted last before its origin
    assert (out["refit_origin"] <= out["origin"]).all()
    assert (out["origin"] - out["refit_origin"] < pd.Timedelta(days=2)).all()


@pytest.mark.slow  # fits small models
@pytest.mark.train
def test_changing_data_after_an_origin_never_changes_its_forecast():
    """Data after T (multiplied, some rows dropped), and weather forecasts issued after T,
    leave every forecast issued up to T as is."""
    base = raw()
    weather = runs(base)
    cut = pd.Timestamp("2025-03-23 05:00", tz="UTC")
    changed = base.copy()
    later = changed["time"] > cut
    changed.loc[later, list(VALUE_COLUMNS)] *= 2.5
    changed = changed.drop(changed.index[later][::7])
    changed_weather = weather.copy()
    issued_later = changed_weather["issue_time"] > cut
    changed_weather.loc[issued_later, list(WEATHER)] *= 0.3
    changed_weather = changed_weather.drop(changed_weather.index[issued_later][::5])
    before = backtest(base, WINDOW, pd.Timedelta(days=1), weather)
    after = backtest(changed, WINDOW, pd.Timedelta(days=1), changed_weather)
    keys = ["horizon", "location_id", "origin"]
    early_b = before[before["origin"] <= cut].set_index(keys)["value"]
    early_a = after[after["origin"] <= cut].set_index(keys)["value"]
    assert len(early_b) > 200
    pd.testing.assert_series_equal(early_b, early_a)
    # and the data after the cut does matter to the forecasts after it
    late_b = before[before["origin"] > cut + pd.Timedelta(days=1)].set_index(keys)["value"]
    late_a = after[after["origin"] > cut + pd.Timedelta(days=1)].set_index(keys)["value"]
    assert not np.allclose(late_b, late_a.reindex(late_b.index))


def test_refit_schedule_starts_at_the_first_origin():
    assert refit_origins(WINDOW, HORIZONS, None) == [pd.Timestamp("2025-03-19 18:00", tz="UTC")]
    every = refit_origins(WINDOW, HORIZONS, pd.Timedelta(days=3))
    assert every[0] == pd.Timestamp("2025-03-19 18:00", tz="UTC")
    assert np.all(np.diff(every) == pd.Timedelta(days=3))
    assert every[-1] < WINDOW.end
    with pytest.raises(ValueError, match="must be after"):
        Window(WINDOW.end, WINDOW.start)


@pytest.mark.slow  # fits small models
@pytest.mark.train
def test_scores_by_location_month_and_hour_use_the_rows_of_the_horizon_scores():
    out = backtest(raw(), WINDOW, None)
    tables = score_tables(out)
    by_h = tables["horizon"].set_index("horizon")
    for name in ("location", "month", "hour"):
        counts = tables[name].groupby("horizon")["n"].sum()
        assert (counts == by_h["n"]).all(), name
    weighted = tables["location"].assign(w=lambda d: d["mae"] * d["n"]).groupby("horizon")
    assert np.allclose(weighted["w"].sum() / weighted["n"].sum(), by_h["mae"])
    assert set(tables["hour"]["hour"]) == set(range(24))
