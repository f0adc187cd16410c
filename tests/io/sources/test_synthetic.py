"""The synthetic source: deterministic, window-independent, physically plausible rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import DriftScenario, Location, SyntheticSource, load_params
from pipeline.core.validation import validate
from pipeline.io.sources import SourceError, make_source
from pipeline.io.sources.synthetic import SyntheticSource as Source
from pipeline.schema import (
    COLUMNS,
    TIME_DTYPE,
    VALUE_COLUMNS,
    VARIABLES,
    WEATHER,
    empty_frame,
)
from pipeline.settings import Settings
from tests.conftest import REPO

LOCATIONS = load_params(REPO / "params.yaml").locations  # berlin, london, madrid, delhi, LA
BY_ID = {loc.id: loc for loc in LOCATIONS}
CLEAN = SyntheticSource(seed=7, gap_rate=0.0, spike_rate=0.0)


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def fetch(config: SyntheticSource, locations, start: str, end: str) -> pd.DataFrame:
    return Source(config).fetch(list(locations), utc(start), utc(end)).frame


def out_of_range(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells outside the schema's physical range (NaN is not out of range)."""
    return pd.DataFrame({
        c: (frame[c] < VARIABLES[c].low) | (frame[c] > VARIABLES[c].high) for c in VALUE_COLUMNS
    })


def local(frame: pd.DataFrame, location_id: str) -> pd.DataFrame:
    part = frame[frame["location_id"] == location_id].copy()
    clock = part["time"].dt.tz_convert(BY_ID[location_id].timezone)
    part["local_hour"] = clock.dt.hour
    part["weekday"] = clock.dt.day_of_week
    part["month"] = clock.dt.month
    return part


@pytest.fixture(scope="module")
def year() -> pd.DataFrame:
    """A clean year for all five default locations (no gaps, no spikes)."""
    return fetch(CLEAN, LOCATIONS, "2025-01-01", "2026-01-01")


# ------------------------------------------------------------------ determinism and windows


# The default data (params.yaml: seed 42, 1 % gaps, 0.1 % spikes, 2025) as the generator made it
# before weather forecasts were added: a new product of the generator must not change a single
# observation (data.dvc's raw partitions stay byte-identical).
DEFAULT_DATA_SHA256 = "9bc81f57927712350544217e9f5d14f26f476463fce3cd8be349a34c2594ce3d"


def test_the_default_observations_are_exactly_those_data_dvc_recorded():
    import hashlib

    from pipeline.core.synthetic import generate
    from pipeline.io.sources.synthetic import hour_index

    first, stop = hour_index(utc("2025-01-01"), True), hour_index(utc("2026-01-01"), True)
    digest = hashlib.sha256()
    for loc in LOCATIONS:
        values = generate(loc.id, loc.latitude, loc.longitude, loc.timezone, first, stop,
                          seed=42, gap_rate=0.01, spike_rate=0.001)
        for column in VALUE_COLUMNS:
            digest.update(column.encode())
            digest.update(np.ascontiguousarray(values[column], dtype="<f8").tobytes())
    assert digest.hexdigest() == DEFAULT_DATA_SHA256


def test_same_seed_gives_identical_rows_and_another_seed_does_not():
    config = SyntheticSource(seed=11)
    first = fetch(config, LOCATIONS[:2], "2025-03-01", "2025-03-15")
    again = fetch(config, LOCATIONS[:2], "2025-03-01", "2025-03-15")
    pd.testing.assert_frame_equal(first, again, check_exact=True)

    other = fetch(SyntheticSource(seed=12), LOCATIONS[:2], "2025-03-01", "2025-03-15")
    assert first[["location_id", "time"]].equals(other[["location_id", "time"]])
    for column in ("pm2_5", "temperature_2m", "wind_speed_10m"):
        assert not np.allclose(first[column], other[column], equal_nan=True), column


@pytest.mark.parametrize(
    ("start", "splits", "end"),
    [
        ("2025-01-01", ["2025-01-09T13:00", "2025-02-01", "2025-02-01T01:00"], "2025-03-01"),
        ("2025-10-20T05:00", ["2025-10-26T00:00", "2025-10-26T01:00"], "2025-11-03"),  # DST end
    ],
)
def test_split_windows_concatenate_to_the_whole_window(start, splits, end):
    """Incremental ingestion must agree exactly with a backfill, gaps, spikes and drift included."""
    config = SyntheticSource(
        seed=3, gap_rate=0.05, spike_rate=0.01,
        scenarios=[DriftScenario(kind="emission_shift", start="2025-01-20", factor=2.0),
                   DriftScenario(kind="sensor_recalibration", start="2025-10-27",
                                 variable="temperature_2m", factor=1.1)],
    )
    whole = fetch(config, LOCATIONS, start, end)
    bounds = [start, *splits, end]
    pieces = [fetch(config, LOCATIONS, a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
    joined = pd.concat(pieces).sort_values(["location_id", "time"]).reset_index(drop=True)
    whole = whole.sort_values(["location_id", "time"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(joined, whole, check_exact=True)


def test_every_location_and_utc_hour_appears_exactly_once_in_canonical_form():
    start, end = utc("2025-03-29T22:30"), utc("2025-04-02T03:00")  # a DST change inside
    frame = Source(SyntheticSource()).fetch(LOCATIONS, start, end).frame
    assert list(frame.columns) == list(COLUMNS)
    pd.testing.assert_series_equal(frame.dtypes, empty_frame().dtypes)
    assert str(frame["time"].dtype) == TIME_DTYPE
    hours = pd.date_range("2025-03-29T23:00", "2025-04-02T02:00", freq="h", tz="UTC")
    assert not frame.duplicated(["location_id", "time"]).any()
    for loc in LOCATIONS:
        times = frame.loc[frame["location_id"] == loc.id, "time"].sort_values()
        assert list(times) == list(hours)


def test_empty_window_gives_an_empty_canonical_frame():
    frame = Source(SyntheticSource()).fetch(LOCATIONS, utc("2025-05-01"), utc("2025-05-01")).frame
    assert frame.empty
    assert list(frame.columns) == list(COLUMNS)


def test_make_source_builds_the_synthetic_source_from_params():
    params = load_params(REPO / "params.yaml")
    source = make_source(params, Settings())
    assert source.name == "synthetic"
    result = source.fetch(params.locations[:1], utc("2025-01-01"), utc("2025-01-02"))
    assert len(result.frame) == 24
    assert not result.failures


# ------------------------------------------------------------------ ranges, gaps, spikes


def test_without_gaps_or_spikes_every_value_is_present_and_physical(year):
    assert not year[list(VALUE_COLUMNS)].isna().any().any()
    assert not out_of_range(year).any().any()
    assert (year["pm10"] >= year["pm2_5"]).all()


def test_gaps_and_spikes_appear_at_their_configured_rates_and_are_quarantined():
    config = SyntheticSource(seed=5, gap_rate=0.05, spike_rate=0.01)
    frame = fetch(config, LOCATIONS, "2025-01-01", "2025-07-01")
    bad = out_of_range(frame)
    spiked_rows = bad.any(axis=1)
    assert 0.007 < spiked_rows.mean() < 0.013
    assert bad.sum(axis=1).max() == 1  # one faulty sensor per spiked hour
    values = frame[list(VALUE_COLUMNS)]
    gap_share = values.isna().mean()
    assert gap_share.between(0.03, 0.07).all(), gap_share
    # gaps come in runs of hours, not isolated cells
    pm = frame.loc[frame["location_id"] == "berlin", "pm2_5"].isna().to_numpy()
    starts = np.count_nonzero(pm[1:] & ~pm[:-1]) + int(pm[0])
    assert pm.sum() / starts > 2.5
    # whole-station outages: some hours lose every variable at once
    assert values.isna().all(axis=1).mean() > 0.005

    checked = validate(frame, known_locations=[loc.id for loc in LOCATIONS])
    assert len(checked.quarantine) == int(spiked_rows.sum())
    assert checked.quarantine["reason"].str.contains("outside").all()


# ------------------------------------------------------------------ physics on a year


def test_ozone_peaks_in_the_local_afternoon(year):
    for loc in LOCATIONS:
        by_hour = local(year, loc.id).groupby("local_hour")["o3"].mean()
        assert 12 <= by_hour.idxmax() <= 17, (loc.id, by_hour.idxmax())
        assert by_hour.max() > 1.3 * by_hour.min()


def test_no2_is_higher_on_weekdays_than_on_sundays_and_peaks_at_rush_hour(year):
    for loc in LOCATIONS:
        part = local(year, loc.id)
        weekday = part.loc[part["weekday"] < 5, "no2"].mean()
        sunday = part.loc[part["weekday"] == 6, "no2"].mean()
        assert weekday > 1.15 * sunday, loc.id
        by_hour = part.groupby("local_hour")["no2"].mean()
        assert by_hour[7:10].max() > by_hour[2:5].max()


def test_ozone_is_titrated_where_no2_is_high(year):
    for loc in LOCATIONS:
        part = local(year, loc.id)
        night = part[part["local_hour"].isin([20, 21, 22, 23, 0, 1])]
        assert night["o3"].corr(night["no2"]) < -0.2, loc.id


def test_pm25_is_lower_in_rainy_or_windy_hours_than_in_calm_dry_ones(year):
    for loc in LOCATIONS:
        part = local(year, loc.id)
        calm_dry = part[(part["wind_speed_10m"] < part["wind_speed_10m"].quantile(0.25))
                        & (part["precipitation"] == 0)]
        windy = part[part["wind_speed_10m"] > part["wind_speed_10m"].quantile(0.9)]
        rainy = part[part["precipitation"] >= 1.0]
        assert len(rainy) > 20, loc.id
        assert windy["pm2_5"].mean() < 0.8 * calm_dry["pm2_5"].mean(), loc.id
        assert rainy["pm2_5"].mean() < 0.8 * calm_dry["pm2_5"].mean(), loc.id


def test_seasons_and_places_differ_as_they_do_in_reality(year):
    berlin = local(year, "berlin")
    winter, summer = berlin["month"].isin([12, 1, 2]), berlin["month"].isin([6, 7, 8])
    assert berlin.loc[winter, "pm2_5"].mean() > 1.5 * berlin.loc[summer, "pm2_5"].mean()
    assert berlin.loc[winter, "co"].mean() > berlin.loc[summer, "co"].mean()
    temperature = berlin["temperature_2m"]
    assert temperature[summer].mean() > temperature[winter].mean() + 10
    means = year.groupby("location_id")[["pm2_5", "o3", "temperature_2m"]].mean()
    assert means.loc["delhi", "pm2_5"] > 4 * means.loc["london", "pm2_5"]
    assert means.loc["los_angeles", "o3"] > means.loc["london", "o3"]
    assert means.loc["delhi", "temperature_2m"] > means.loc["berlin", "temperature_2m"] + 8


def test_weather_is_internally_consistent(year):
    for loc in LOCATIONS:
        part = local(year, loc.id)
        day = part["time"].dt.floor("D")
        anomaly = part[["temperature_2m", "relative_humidity_2m"]] - part.groupby(day)[
            ["temperature_2m", "relative_humidity_2m"]].transform("mean")
        assert anomaly["temperature_2m"].corr(anomaly["relative_humidity_2m"]) < -0.6, loc.id
        raining = part["precipitation"] > 0
        assert 0.01 < raining.mean() < 0.15, loc.id
        assert part.loc[raining, "cloud_cover"].min() >= 60, loc.id
        by_hour = part.groupby("local_hour")["temperature_2m"].mean()
        assert 12 <= by_hour.idxmax() <= 17, loc.id
        assert 3 <= by_hour.idxmin() <= 8, loc.id
    berlin = year[year["location_id"] == "berlin"]
    assert berlin["temperature_2m"].corr(berlin["relative_humidity_2m"]) < -0.4
    madrid = year.loc[year["location_id"] == "madrid", "surface_pressure"]
    london = year.loc[year["location_id"] == "london", "surface_pressure"]
    assert madrid.mean() < london.mean() - 50  # 660 m above sea level


def test_an_unknown_location_gets_a_plausible_deterministic_climate():
    nowhere = Location(id="site_42", name="Somewhere", latitude=-33.9, longitude=151.2,
                       timezone="Australia/Sydney")
    frame = fetch(CLEAN, [nowhere], "2025-01-01", "2026-01-01")
    assert not out_of_range(frame).any().any()
    assert not frame[list(VALUE_COLUMNS)].isna().any().any()
    pd.testing.assert_frame_equal(frame, fetch(CLEAN, [nowhere], "2025-01-01", "2026-01-01"))
    month = frame["time"].dt.month
    # southern hemisphere: January is summer
    temps = frame.groupby(month)["temperature_2m"].mean()
    assert temps[1] > temps[7] + 4


# ------------------------------------------------------------------ drift scenarios


def test_emission_shift_raises_the_level_from_its_start_and_only_where_configured():
    berlin, london = BY_ID["berlin"], BY_ID["london"]
    base = fetch(CLEAN, [berlin, london], "2025-05-01", "2025-07-01")
    shifted_config = CLEAN.model_copy(update={"scenarios": [
        DriftScenario(kind="emission_shift", start="2025-06-01", variable="pm2_5", factor=3.0,
                      locations=["berlin"])]})
    shifted = fetch(shifted_config, [berlin, london], "2025-05-01", "2025-07-01")
    before = shifted["time"] < utc("2025-06-01")
    pd.testing.assert_frame_equal(shifted[before], base[before], check_exact=True)
    is_london = shifted["location_id"] == "london"
    pd.testing.assert_frame_equal(shifted[is_london], base[is_london], check_exact=True)
    after_berlin = ~before & ~is_london
    ratio = shifted.loc[after_berlin, "pm2_5"].mean() / base.loc[after_berlin, "pm2_5"].mean()
    assert ratio > 1.3
    # only the emitted part grows: less than the factor, and PM10 follows PM2.5
    assert ratio < 3.0
    assert shifted.loc[after_berlin, "pm10"].mean() > base.loc[after_berlin, "pm10"].mean()
    assert (shifted.loc[after_berlin, "temperature_2m"]
            == base.loc[after_berlin, "temperature_2m"]).all()


def test_sensor_recalibration_scales_the_measured_value_from_its_start():
    loc = BY_ID["madrid"]
    base = fetch(CLEAN, [loc], "2025-03-01", "2025-04-01")
    drifted_config = CLEAN.model_copy(update={"scenarios": [
        DriftScenario(kind="sensor_recalibration", start="2025-03-15", variable="no2",
                      factor=1.5)]})
    drifted = fetch(drifted_config, [loc], "2025-03-01", "2025-04-01")
    after = drifted["time"] >= utc("2025-03-15")
    pd.testing.assert_frame_equal(drifted[~after], base[~after], check_exact=True)
    ratio = drifted.loc[after, "no2"] / base.loc[after, "no2"]
    assert ratio[base.loc[after, "no2"] > 10].between(1.45, 1.55).all()
    others = [c for c in VALUE_COLUMNS if c != "no2"]
    pd.testing.assert_frame_equal(drifted[others], base[others], check_exact=True)


def test_an_emission_shift_of_a_weather_variable_is_refused_with_a_clear_message():
    config = SyntheticSource(scenarios=[
        DriftScenario(kind="emission_shift", start="2025-01-01", variable="temperature_2m")])
    with pytest.raises(SourceError, match="emission_shift needs a pollutant.*temperature_2m"):
        Source(config)


# ------------------------------------------------------------------ one simulation, two products


@pytest.mark.parametrize(("start", "end"), [("2025-02-27T05:00", "2025-03-02T19:00"),
                                           ("2025-06-01", "2025-07-01")])
def test_observations_and_forecasts_from_one_simulation_are_those_of_their_own(start, end):
    """The source simulates a chunk's world once for both products: every value is the float
    each product computes alone (its own simulation of its own window), drifts included."""
    from pipeline.core.synthetic import generate, generate_forecasts
    from pipeline.io.sources.synthetic import hour_index

    config = SyntheticSource(seed=11, scenarios=[
        DriftScenario(kind="emission_shift", start="2025-02-28", variable="pm2_5", factor=2.0,
                      locations=["delhi"]),
        DriftScenario(kind="sensor_recalibration", start="2025-06-10", variable="no2",
                      factor=1.3)])
    source = Source(config)
    first, stop = hour_index(utc(start), ceil=True), hour_index(utc(end), ceil=True)
    observed = source.fetch(LOCATIONS, utc(start), utc(end)).frame
    forecasts = source.fetch_forecasts(LOCATIONS, utc(start), utc(end)).frame
    for loc in LOCATIONS:
        alone = generate(loc.id, loc.latitude, loc.longitude, loc.timezone, first, stop,
                         seed=11, gap_rate=config.gap_rate, spike_rate=config.spike_rate,
                         drifts=source.drifts)
        mine = observed[observed["location_id"] == loc.id]
        for column in VALUE_COLUMNS:
            np.testing.assert_array_equal(mine[column].to_numpy(), alone[column], err_msg=column)
        runs = generate_forecasts(loc.id, loc.latitude, loc.longitude, loc.timezone, first,
                                  stop, seed=11)
        shared = forecasts[forecasts["location_id"] == loc.id]
        assert len(shared) == len(runs["time"]) > 0
        for column in WEATHER:
            np.testing.assert_array_equal(shared[column].to_numpy(), runs[column],
                                          err_msg=column)


def test_the_simulations_a_fetch_keeps_are_bounded_and_the_rest_made_again(monkeypatch):
    """Memory: a fetch of more locations than it keeps simulations for keeps only that many
    until the forecasts; the forecasts of the others are simulated again, the same floats."""
    from pipeline.core.synthetic import generate_forecasts
    from pipeline.io.sources import synthetic as module
    from pipeline.io.sources.synthetic import hour_index

    monkeypatch.setattr(module, "MAX_KEPT_SIMULATIONS", 1)
    source = Source(SyntheticSource(seed=5))
    start, end = utc("2025-03-01"), utc("2025-03-03")
    source.fetch(LOCATIONS, start, end)
    assert len(source._simulations) == 1
    forecasts = source.fetch_forecasts(LOCATIONS, start, end).frame
    assert source._simulations == {}
    first, stop = hour_index(start, ceil=True), hour_index(end, ceil=True)
    for loc in LOCATIONS:
        runs = generate_forecasts(loc.id, loc.latitude, loc.longitude, loc.timezone, first,
                                  stop, seed=5)
        shared = forecasts[forecasts["location_id"] == loc.id]
        for column in WEATHER:
            np.testing.assert_array_equal(shared[column].to_numpy(), runs[column],
                                          err_msg=column)


def test_a_simulation_of_another_window_location_or_drift_is_refused():
    from pipeline.core.synthetic import Drift, generate, generate_forecasts, simulate

    berlin = BY_ID["berlin"]
    made = simulate(berlin.id, berlin.latitude, berlin.longitude, berlin.timezone,
                    480_000, 480_100, seed=1)
    args = (berlin.latitude, berlin.longitude, berlin.timezone)
    with pytest.raises(ValueError, match="does not hold"):
        generate(berlin.id, *args, 480_000, 480_200, seed=1, simulation=made)
    with pytest.raises(ValueError, match="does not hold"):
        generate_forecasts(berlin.id, *args, 480_000, 480_100, seed=1, simulation=made)
    with pytest.raises(ValueError, match="given for 'london'"):
        generate("london", *args, 480_000, 480_100, seed=1, simulation=made)
    with pytest.raises(ValueError, match="other drifts"):
        generate(berlin.id, *args, 480_000, 480_100, seed=1, simulation=made,
                 drifts=[Drift("emission_shift", 480_050, "pm2_5", 2.0)])


# ------------------------------------------------------------------ through the ingest step


def test_ingesting_twice_in_two_windows_stores_the_same_rows_as_one_backfill(tmp_path):
    from pipeline.context import Context
    from pipeline.io.storage import raw_files, read_partition
    from pipeline.steps import ingest
    from tests.conftest import make_project

    def stored(root):
        ctx = Context.load(root, settings=Settings())
        files = raw_files(ctx.paths.raw_dir, "synthetic", ctx.params.location_ids)
        return pd.concat([read_partition(f) for f in files], ignore_index=True)

    whole = make_project(tmp_path / "whole")
    ingest.run(Context.load(whole, settings=Settings()), start="2025-01-01", end="2025-02-01")
    split = make_project(tmp_path / "split")
    ctx = Context.load(split, settings=Settings())
    ingest.run(ctx, start="2025-01-01", end="2025-01-17T05:00")
    report = ingest.run(ctx, start="2025-01-17T05:00", end="2025-02-01")
    assert report.ok
    pd.testing.assert_frame_equal(stored(split), stored(whole), check_exact=True)
    assert len(stored(whole)) > 0.98 * 2 * 31 * 24  # only spiked rows are held back
