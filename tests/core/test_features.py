"""Features are causal (no look-ahead), vectorised per location, on an hourly grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import FeatureConfig
from pipeline.core.features import (
    Columns,
    FeatureSettings,
    FeatureSpec,
    HourlyGrid,
    Place,
    build_features,
    column_horizon,
    columns_for_horizon,
    feature_blocks,
    feature_columns,
    feature_names,
    hour_times,
    hourly_grids,
    label_column,
    latest_features,
    latest_row,
    location_codes,
    regular_grid,
    row_positions,
    seasonal_column,
    window,
)
from pipeline.schema import VALUE_COLUMNS, WEATHER

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


def runs(frame: pd.DataFrame, every: int = 6, leads: int = 48, seed: int = 1) -> pd.DataFrame:
    """Weather-forecast runs every ``every`` hours over the frame's span, ``leads`` hours ahead."""
    rng = np.random.default_rng(seed)
    issues = pd.date_range(frame["time"].min().floor("D"), frame["time"].max(),
                           freq=f"{every}h")
    rows = []
    for loc in frame["location_id"].unique():
        for issue in issues:
            times = issue + pd.to_timedelta(np.arange(1, leads + 1), unit="h")
            part = pd.DataFrame({c: rng.uniform(1, 50, leads) for c in WEATHER})
            part["wind_direction_10m"] = rng.uniform(0, 360, leads)
            part.insert(0, "time", times)
            part.insert(0, "issue_time", issue)
            part.insert(0, "location_id", loc)
            rows.append(part)
    return pd.concat(rows, ignore_index=True)


def features(frame: pd.DataFrame, forecasts: pd.DataFrame | None = None) -> pd.DataFrame:
    return build_features(frame, SPEC, TZ, location_codes(list(TZ)), forecasts=forecasts)


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


def test_forecast_features_read_only_runs_issued_by_the_origin():
    """A target-hour forecast feature is the newest run issued at or before the origin."""
    base = raw()
    forecasts = runs(base)
    cut = pd.Timestamp("2025-03-10 09:00", tz="UTC")
    before = features(base, forecasts)
    # runs issued after the origin change: nothing up to it may change
    changed = forecasts.copy()
    later = changed["issue_time"] > cut
    changed.loc[later, list(WEATHER)] *= 1.7
    changed = changed.drop(changed.index[later][::3])
    after = features(base, changed)
    cols = feature_columns(before)
    pd.testing.assert_frame_equal(
        before[before["time"] <= cut].set_index(["location_id", "time"])[cols],
        after[after["time"] <= cut].set_index(["location_id", "time"])[cols])
    # at 09:00 the newest run is 06:00's: its value for 15:00 (lead 9) is the 6-hour feature
    row = before[(before["location_id"] == "a") & (before["time"] == cut)].iloc[0]
    run = forecasts[(forecasts["location_id"] == "a")
                    & (forecasts["issue_time"] == cut - pd.Timedelta(hours=3))]
    value = run.loc[run["time"] == cut + pd.Timedelta(hours=6), "temperature_2m"].iloc[0]
    assert row["fc_temperature_2m__h6"] == value
    assert row["fc_lead__h6"] == 9
    expected_rain = run.loc[(run["time"] > cut) & (run["time"] <= cut + pd.Timedelta(hours=6)),
                            "precipitation"].sum()
    assert row["fc_precipitation_sum__h6"] == pytest.approx(expected_rain)
    # without forecasts the columns exist and are empty (a CSV source); train drops them
    plain = features(base)
    assert plain["fc_temperature_2m__h6"].isna().all()
    assert plain.filter(like="pm2_5_rel_daily_profile__h6").notna().any().all()


def test_each_horizon_has_its_own_target_hour_features():
    names = feature_names(SPEC)
    assert "fc_wind_speed_10m__h6" in names
    assert "pm2_5_diurnal_shape__h24" in names
    for horizon in SPEC.horizons:
        own = columns_for_horizon(names, horizon)
        assert {"pm2_5_lag1", "hour_sin"} <= set(own)  # the common features
        assert {column_horizon(c) for c in own} <= {None, horizon}
        assert f"fc_temperature_2m__h{horizon}" in own


def test_profiles_are_the_same_hour_of_past_days_and_weeks():
    frame = raw(hours=24 * 40)
    out = features(frame).set_index(["location_id", "time"])
    series = frame[frame["location_id"] == "a"].set_index("time")["pm2_5"]
    t = pd.Timestamp("2025-04-01 10:00", tz="UTC")
    row = out.loc[("a", t)]
    hours = pd.to_timedelta
    daily = series[[t + hours(6, "h") - hours(24 * k, "h") for k in range(1, 8)]].mean()
    weekly = series[[t + hours(6, "h") - hours(168 * k, "h") for k in range(1, 5)]].mean()
    assert row["pm2_5_rel_daily_profile__h6"] == pytest.approx(
        np.log1p(daily) - np.log1p(series[t]))
    assert row["pm2_5_rel_weekly_profile__h6"] == pytest.approx(
        np.log1p(weekly) - np.log1p(series[t]))
    week_mean = series[t - hours(167, "h"):t].mean()
    assert row["pm2_5_diurnal_shape__h6"] == pytest.approx(
        np.log1p(daily) - np.log1p(week_mean))
    # the 24-hour trend is the least-squares slope of log1p(level) per hour
    y = np.log1p(series[t - hours(23, "h"):t].to_numpy())
    assert row["pm2_5_trend24"] == pytest.approx(np.polyfit(np.arange(24), y, 1)[0])


def test_anomalies_are_the_level_now_against_the_same_hour_of_past_days_and_weeks():
    frame = raw(hours=24 * 40)
    frame = frame.drop(frame.index[(frame["location_id"] == "a")][600:610])  # a gap
    spec = FeatureSpec(("pm2_5",), (1, 6), FeatureSettings(anomalies=True))
    out = build_features(frame, spec, TZ, location_codes(list(TZ))).set_index(
        ["location_id", "time"])
    series = frame[frame["location_id"] == "a"].set_index("time")["pm2_5"]
    t = pd.Timestamp("2025-04-01 10:00", tz="UTC")
    row = out.loc[("a", t)]
    hours = pd.to_timedelta

    def usual(step: int, count: int) -> float:
        return series.reindex([t - hours(step * k, "h") for k in range(1, count + 1)]).mean()

    now = np.log1p(series[t])
    assert row["pm2_5_anomaly_daily"] == pytest.approx(now - np.log1p(usual(24, 7)))
    assert row["pm2_5_anomaly_weekly"] == pytest.approx(now - np.log1p(usual(168, 4)))
    assert row["pm2_5_anomaly_monthly"] == pytest.approx(now - np.log1p(usual(24, 28)))
    # online (a bounded window) equals batch, bit for bit, also across the gap
    grid = hourly_grids(frame[frame["location_id"] == "a"])[0]
    for end in (0, 30, 605, 700, len(grid) - 1):
        start = max(0, end - spec.warmup_hours + 1)
        window = HourlyGrid("a", grid.hours[start:end + 1],
                            {k: v[start:end + 1] for k, v in grid.series.items()})
        online = latest_features(window, spec, TZ["a"], 0.0)
        batch = out.loc[("a", hour_times(grid.hours[end:end + 1])[0])]
        for name in ("pm2_5_anomaly_daily", "pm2_5_anomaly_weekly", "pm2_5_anomaly_monthly"):
            np.testing.assert_array_equal(online[name], batch[name], err_msg=f"{name} {end}")


def test_weather_lags_are_the_observed_weather_hours_ago_with_the_wind_as_a_vector():
    frame = raw(hours=24 * 10)
    spec = FeatureSpec(("pm2_5",), (1,), FeatureSettings(weather_lags=(1, 24)))
    out = build_features(frame, spec, TZ, location_codes(list(TZ))).set_index(
        ["location_id", "time"])
    series = frame[frame["location_id"] == "b"].set_index("time")
    t = pd.Timestamp("2025-03-05 10:00", tz="UTC")
    row = out.loc[("b", t)]
    for lag in (1, 24):
        past = series.loc[t - pd.Timedelta(hours=lag)]
        assert row[f"temperature_2m_lag{lag}"] == past["temperature_2m"]
        rad = np.deg2rad(past["wind_direction_10m"])
        assert row[f"wind_u_lag{lag}"] == pytest.approx(-past["wind_speed_10m"] * np.sin(rad))
        assert row[f"wind_v_lag{lag}"] == pytest.approx(-past["wind_speed_10m"] * np.cos(rad))
    # a direction in degrees is not lagged (359 and 1 are neighbours), the vector is
    assert "wind_direction_10m_lag1" not in out
    assert "wind_speed_10m_lag1" not in out
    first = out.loc["b"].iloc[0]
    assert np.isnan(first["temperature_2m_lag1"])  # before the grid: unknown


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



def pandas_reference(frame: pd.DataFrame) -> pd.DataFrame:
    """The features the pandas implementation built (groupby shift/rolling on the grid)."""
    grid = regular_grid(frame)
    by_loc = grid.groupby("location_id", sort=False)
    out = {}
    for lag in SPEC.config.lags:
        out[f"pm2_5_lag{lag}"] = by_loc["pm2_5"].shift(lag)
    for width in SPEC.config.rolling_windows:
        roll = by_loc["pm2_5"].rolling(width, min_periods=max(1, width // 2))
        out[f"pm2_5_mean{width}"] = roll.mean().reset_index(level=0, drop=True)
        out[f"pm2_5_std{width}"] = roll.std().reset_index(level=0, drop=True)
    out["pm2_5_diff24"] = by_loc["pm2_5"].diff(24)
    out["precipitation_sum24"] = (by_loc["precipitation"].rolling(24, min_periods=1).sum()
                                  .reset_index(level=0, drop=True))
    out["no2_lag24"] = by_loc["no2"].shift(24)
    return pd.DataFrame(out)


def test_kernels_equal_pandas_groupby_rolling():
    """Same values as pandas' groupby shift/rolling, gaps and series starts included.

    pandas' rolling std accumulates rounding error (its online update drifts up to ~1e-10
    here); the window kernels compute each window afresh, hence the tolerance.
    """
    frame = raw(hours=24 * 12)
    frame = frame.drop(frame.index[(frame["location_id"] == "a")][100:140])  # a 40-hour gap
    frame.loc[frame.sample(frac=0.1, random_state=1).index, "pm2_5"] = np.nan  # scattered holes
    ours = features(frame)
    expected = pandas_reference(frame)
    assert len(ours) == len(expected)
    for column in expected:
        np.testing.assert_allclose(ours[column].to_numpy(), expected[column].to_numpy(),
                                   rtol=1e-9, atol=1e-9, err_msg=column)


def test_online_row_equals_batch_row_bit_for_bit():
    """latest_features over the last warmup_hours equals build_features' row (no train/serve skew).

    Checked at many issue hours, across a gap and right after the series start.
    """
    frame = raw(hours=24 * 40)
    frame = frame.drop(frame.index[(frame["location_id"] == "b")][150:160])
    forecasts = runs(frame)
    forecasts = forecasts.drop(forecasts.index[forecasts["issue_time"].dt.day == 20])  # no runs
    batch = features(frame, forecasts).set_index(["location_id", "time"])
    names = feature_names(SPEC)
    codes = location_codes(list(TZ))
    assert list(batch.columns[: len(names)]) == names
    for location_id, part in frame.groupby("location_id"):
        grid = hourly_grids(part, forecasts)[0]
        for end in [0, 1, 5, 30, 100, 151, 155, 165, 200, 456, 480, 700, len(grid) - 1]:
            start = max(0, end - SPEC.warmup_hours + 1)
            first = int(grid.hours[0])
            windows = {  # series of their own (each value copied), and rows of one table
                "own series": HourlyGrid(location_id, grid.hours[start:end + 1],
                                         {k: v[start:end + 1] for k, v in grid.series.items()},
                                         grid.forecasts.since(int(grid.hours[start]) - 48)),
                "table": window(grid, first + end - SPEC.warmup_hours + 1, first + end),
            }
            assert windows["table"].table is not None
            row = batch.loc[(location_id, hour_times(grid.hours[end:end + 1])[0]), names]
            for kind, part_grid in windows.items():
                online = latest_features(part_grid, SPEC, TZ[location_id], codes[location_id])
                np.testing.assert_array_equal(np.array([online[n] for n in names]),
                                              row.to_numpy(dtype=float),
                                              err_msg=f"{end} {kind}")


def test_gather_blocks_declare_what_their_kernels_compute():
    """A block's ``gather`` (variable, steps back) is what its kernel gives at every position,
    gaps, the grid's start and a variable the data lack (a covariate) included: the one-row
    path reads these blocks from the declaration, the batch path runs the kernels."""
    frame = raw(hours=24 * 10)
    frame = frame.drop(frame.index[(frame["location_id"] == "a")][30:40])
    spec = FeatureSpec(("pm2_5",), (1, 6), FeatureConfig(covariates=["traffic"]))
    grid = hourly_grids(frame[frame["location_id"] == "a"])[0]
    assert "cov_traffic" not in grid.series
    pos = np.arange(len(grid))
    gathers = [b for b in feature_blocks(spec) if b.gather is not None]
    assert {b.gather[0] for b in gathers} >= {"pm2_5", "cov_traffic", "wind_speed_10m"}
    for block in gathers:
        variable, steps = block.gather
        values = block.kernel(grid, pos, Place("UTC", 0.0), Columns())
        values = values[:, None] if values.ndim == 1 else values
        series = grid.series.get(variable, np.full(len(grid), np.nan))
        source = pos[:, None] - np.array(steps)[None, :]
        expected = np.where((source >= 0) & (source < len(grid)),
                            series[np.clip(source, 0, len(grid) - 1)], np.nan)
        np.testing.assert_array_equal(values, expected, err_msg=str(block.columns))


def test_latest_row_holds_the_features_in_order_and_row_positions_find_them():
    frame = raw(hours=24 * 10)
    grid = hourly_grids(frame[frame["location_id"] == "b"])[0]
    named = latest_features(grid, SPEC, TZ["b"], 1.0)
    row = latest_row(grid, SPEC, TZ["b"], 1.0)
    names = feature_names(SPEC)
    np.testing.assert_array_equal(row, np.array([named[n] for n in names]))
    picked = names[::-7]
    np.testing.assert_array_equal(row[row_positions(SPEC, picked)],
                                  np.array([named[n] for n in picked]))
    with pytest.raises(KeyError):
        row_positions(SPEC, ["not_a_feature"])


def test_online_window_padded_before_the_history_changes_nothing():
    """Empty hours in front of a short history (a new location) give the same row."""
    frame = raw(hours=30)
    part = frame[frame["location_id"] == "a"]
    grid = hourly_grids(part)[0]
    padded = HourlyGrid.from_rows("a", grid.hours, grid.series,
                                  start=int(grid.hours[-1]) - SPEC.warmup_hours + 1)
    assert len(padded) == SPEC.warmup_hours
    a = latest_features(grid, SPEC, TZ["a"], 0)
    b = latest_features(padded, SPEC, TZ["a"], 0)
    np.testing.assert_array_equal(np.array(list(a.values())), np.array(list(b.values())))


def test_core_features_take_plain_values():
    """pipeline.core.features does not depend on the config module (layers point one way)."""
    import ast
    import inspect

    import pipeline.core.features as module

    imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(module)))
                if isinstance(node, ast.ImportFrom)}
    assert "pipeline.config" not in imported
    assert SPEC.config == FeatureSettings.of(FeatureConfig())


def test_window_copies_hours_and_pads_with_nan():
    grid = hourly_grids(raw(hours=10)[lambda f: f["location_id"] == "a"])[0]
    first = int(grid.hours[0])
    part = window(grid, first - 2, first + 3)
    assert list(part.hours) == list(range(first - 2, first + 4))
    assert np.isnan(part.series["pm2_5"][:2]).all()
    np.testing.assert_array_equal(part.series["pm2_5"][2:], grid.series["pm2_5"][:4])
    part.series["pm2_5"][2] = -1.0  # a copy: the stored grid is untouched
    assert grid.series["pm2_5"][0] != -1.0
    same = HourlyGrid.from_rows("a", grid.hours, grid.series, start=first - 2, end=first + 3)
    np.testing.assert_array_equal(window(grid, first - 2, first + 3).series["no2"],
                                  same.series["no2"])
