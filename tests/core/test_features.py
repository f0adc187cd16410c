"""Features are causal (no look-ahead), vectorised per location, on an hourly grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import FeatureConfig
from pipeline.core.features import (
    FeatureSpec,
    build_features,
    feature_columns,
    label_column,
    location_codes,
    seasonal_column,
)
from pipeline.schema import VALUE_COLUMNS

TZ = {"a": "Europe/Berlin", "b": "Asia/Kolkata"}
SPEC = FeatureSpec(("pm2_5",), (1, 6, 24), FeatureConfig())


def raw(hours: int = 24 * 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = pd.date_range("2025-03-01", periods=hours, freq="h", tz="UTC")
    frames = []
    for loc in TZ:
        df = pd.DataFrame({c: rng.uniform(1, 50, hours) for c in VALUE_COLUMNS})
        df["wind_direction_10m"] = rng.uniform(0, 360, hours)
        df.insert(0, "time", times)
        df.insert(0, "location_id", loc)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def features(frame: pd.DataFrame) -> pd.DataFrame:
    return build_features(frame, SPEC, TZ, location_codes(list(TZ)))


def test_no_look_ahead():
    """Changing any data after the forecast time leaves every feature up to it unchanged."""
    base = raw()
    cut = pd.Timestamp("2025-03-10 12:00", tz="UTC")
    changed = base.copy()
    later = changed["time"] > cut
    changed.loc[later, list(VALUE_COLUMNS)] *= 3.7
    # and drop some later rows entirely
    changed = changed.drop(changed.index[later][::5])
    before = features(base)
    after = features(changed)
    cols = feature_columns(before)
    keep_b = before[before["time"] <= cut].set_index(["location_id", "time"])[cols]
    keep_a = after[after["time"] <= cut].set_index(["location_id", "time"])[cols]
    pd.testing.assert_frame_equal(keep_b, keep_a)
    # labels, which do look ahead, are never model inputs
    assert not [c for c in cols if c.startswith(("y__", "base_"))]


def test_labels_and_lags_are_shifted_in_hours_per_location():
    frame = raw(hours=200)
    frame = frame.drop(frame.index[(frame["location_id"] == "a")][50:53])  # a 3-hour gap
    out = features(frame)
    a = out[out["location_id"] == "a"].set_index("time")
    b = out[out["location_id"] == "b"].set_index("time")
    t = pd.Timestamp("2025-03-05 10:00", tz="UTC")
    assert a.loc[t, "pm2_5_lag24"] == a.loc[t - pd.Timedelta(hours=24), "pm2_5"]
    assert a.loc[t, label_column("pm2_5", 6)] == a.loc[t + pd.Timedelta(hours=6), "pm2_5"]
    assert a.loc[t, seasonal_column("pm2_5", 6)] == a.loc[t - pd.Timedelta(hours=18), "pm2_5"]
    # gaps are rows of NaN on the grid, so shifts stay in hours
    assert len(a) == 200
    assert a["pm2_5"].isna().sum() == 3
    # no leakage across locations: b's first lag is NaN, not a's last value
    assert np.isnan(b["pm2_5_lag1"].iloc[0])


def test_calendar_uses_local_time_and_wind_vector():
    out = features(raw(hours=48))
    row = out[(out["location_id"] == "b") & (out["time"] == pd.Timestamp("2025-03-01 06:30",
                                                                         tz="UTC").floor("h"))]
    # 06:00 UTC is 11:30 in Kolkata -> local hour 11
    assert row["hour_sin"].iloc[0] == pytest.approx(np.sin(2 * np.pi * 11 / 24))
    frame = raw(hours=2)
    frame["wind_speed_10m"] = 10.0
    frame["wind_direction_10m"] = 270.0  # from the west: flow towards the east
    out = features(frame)
    assert out["wind_u"].iloc[0] == pytest.approx(10.0)
    assert out["wind_v"].iloc[0] == pytest.approx(0.0, abs=1e-9)

