"""The two real data sets import as they come, through the example configs: one test per
format quirk, on the committed slices (tests/data/realdata) and on slices made here from
``../shared/datasets`` (skipped, saying why, when that folder is absent)."""

from __future__ import annotations

import gzip
import io
import logging
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_params
from pipeline.context import Context
from pipeline.io.sources.csv_import import CsvImportError, CsvSource
from pipeline.io.storage import read_raw
from pipeline.schema import MOLAR_VOLUME_L, MOLECULAR_WEIGHT
from pipeline.settings import Settings
from pipeline.steps import backfill, ingest
from tests.io.sources.realdata import (
    BEIJING,
    COMMITTED,
    DETROIT,
    REPO,
    beijing_slice,
    detroit_slice,
    shared_file,
)

EXAMPLES = REPO / "examples" / "realdata"
BEIJING_SLICE = COMMITTED / "beijing_pm25_2010-01-01_03.csv"
DETROIT_SLICE = COMMITTED / "detroit_windsor_openaq_slice.csv"


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def ugm3(ppm: float, gas: str) -> float:
    return ppm * 1000 * MOLECULAR_WEIGHT[gas] / MOLAR_VOLUME_L


def example(tmp_path, name: str, text: str) -> Context:
    """A project whose params.yaml is the example config verbatim, with ``text`` as the data
    file it names (in AQ_CSV_DIR, under the real file's name)."""
    root, data = tmp_path / name, tmp_path / "exports"
    root.mkdir(parents=True)
    data.mkdir(exist_ok=True)
    shutil.copy(EXAMPLES / name / "params.yaml", root / "params.yaml")
    payload = text.encode("utf-8")
    if name == "detroit":
        (data / DETROIT).write_bytes(gzip.compress(payload))
    else:
        (data / BEIJING).write_bytes(payload)
    return Context.load(root, settings=Settings(csv_dir=str(data)))


def csv_source(ctx: Context) -> CsvSource:
    return CsvSource(ctx.params.source.csv, base_dir=ctx.paths.root,
                     data_dir=ctx.settings.csv_dir)


def committed(path) -> str:
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


def fetch_all(ctx: Context, start="2000-01-01", end="2030-01-01"):
    return csv_source(ctx).fetch(ctx.params.locations, ts(start), ts(end))


# ------------------------------------------------------------------ provenance


def test_committed_slices_are_verbatim_rows_of_the_real_files():
    assert committed(BEIJING_SLICE) == beijing_slice(shared_file(BEIJING))
    assert committed(DETROIT_SLICE) == detroit_slice(shared_file(DETROIT))


def test_the_example_configs_load_and_name_the_real_files():
    for name, targets, n_locations, file in (("beijing", ["pm2_5"], 1, BEIJING),
                                             ("detroit", ["pm2_5", "no2", "o3"], 14, DETROIT)):
        params = load_params(EXAMPLES / name / "params.yaml")
        assert params.source.kind == "csv"
        assert params.source.csv.path.split("#")[0].strip() == file
        assert params.targets == targets
        assert len(params.locations) == n_locations
        assert params.source.csv.hour_ending


# ------------------------------------------------------------------ Beijing: time in 4 columns


def test_beijing_hours_in_four_columns_are_hour_ending_china_standard_time(tmp_path):
    """Row ``2010,1,1,0`` is the hour that ENDS at 00:00 CST on 1 January (hour-ending),
    i.e. 23:00-24:00 CST on 31 December = 15:00-16:00 UTC: stored at 2009-12-31T15:00Z,
    the canonical start of the UTC hour. The fixed +08:00 offset has no daylight saving."""
    ctx = example(tmp_path, "beijing", committed(BEIJING_SLICE))
    frame = fetch_all(ctx).frame
    assert len(frame) == 72
    assert frame["time"].iloc[0] == ts("2009-12-31T15:00")
    assert frame["time"].iloc[-1] == ts("2010-01-03T14:00")  # 2010-01-03 hour 23 CST
    assert (frame["time"].diff().dropna() == pd.Timedelta(hours=1)).all()
    # read as hour-beginning the same row would be 16:00Z: the setting moves every row by 1 h
    config = ctx.params.source.csv.model_copy(update={"hour_ending": False})
    starts = CsvSource(config, data_dir=ctx.settings.csv_dir).fetch(
        ctx.params.locations, ts("2009-12-31"), ts("2010-01-05")).frame["time"]
    assert (starts - frame["time"] == pd.Timedelta(hours=1)).all()
    # Asia/Shanghai had no daylight saving after 1991: the same hours as the fixed offset
    config = ctx.params.source.csv.model_copy(update={"time_zone": "Asia/Shanghai"})
    named = CsvSource(config, data_dir=ctx.settings.csv_dir).fetch(
        ctx.params.locations, ts("2009-12-31"), ts("2010-01-05")).frame["time"]
    assert named.tolist() == frame["time"].tolist()


def test_beijing_missing_pm25_is_nan_and_values_are_as_in_the_file(tmp_path):
    ctx = example(tmp_path, "beijing", committed(BEIJING_SLICE))
    frame = fetch_all(ctx).frame.set_index("time")
    assert frame["pm2_5"].iloc[:24].isna().all()  # "NA" on 1 January
    day2 = frame.loc[ts("2010-01-01T15:00")]  # 2010-01-02 hour 0 CST, hour-ending
    assert (day2["pm2_5"], day2["temperature_2m"], day2["surface_pressure"]) == (129, -4, 1020)
    assert day2["cov_dew_point"] == -16
    assert frame["cov_snow_hours"].max() == 27  # cumulated hours of snow, kept as they are


def test_the_whole_beijing_file_is_every_hour_once(tmp_path):
    ctx = example(tmp_path, "beijing", committed(shared_file(BEIJING)))
    result = fetch_all(ctx)
    frame = result.frame
    assert len(frame) == 43_824
    assert frame["time"].is_unique
    assert (frame["time"].diff().dropna() == pd.Timedelta(hours=1)).all()
    assert (frame["time"].iloc[0], frame["time"].iloc[-1]) == (ts("2009-12-31T15:00"),
                                                               ts("2014-12-31T14:00"))
    assert result.quarantine is None
    assert not result.time_notes
    assert frame["pm2_5"].isna().sum() == 2067  # the file's NA


# ------------------------------------------------------------------ Beijing: wind


def test_beijing_wind_category_and_cumulated_speed_become_direction_and_hourly_speed(tmp_path):
    """cbwd NE/NW/SE are the sectors' centres (45, 315, 135 degrees, where the wind blows
    from); cv (calm or variable) has no direction. Iws sums the hourly speeds since cbwd
    last changed: the hourly speed is its difference to the hour before, or Iws itself at a
    change; the first row cannot be told."""
    ctx = example(tmp_path, "beijing", committed(BEIJING_SLICE))
    frame = fetch_all(ctx).frame
    raw = pd.read_csv(BEIJING_SLICE)
    np.testing.assert_array_equal(
        frame["wind_direction_10m"], raw["cbwd"].map({"NE": 45, "NW": 315, "SE": 135,
                                                      "cv": np.nan}))
    speed = frame["wind_speed_10m"].to_numpy()
    assert np.isnan(speed[0])  # 1.79 m/s summed since an unknown hour
    np.testing.assert_allclose(speed[1:4], [4.92 - 1.79, 6.71 - 4.92, 9.84 - 6.71])
    assert speed[15] == pytest.approx(0.89)  # NW -> cv: the sum restarts
    assert speed[16] == pytest.approx(1.79)  # cv -> NW
    assert speed[17] == pytest.approx(2.68 - 1.79)
    assert speed[24] == pytest.approx(1.79)  # cv -> SE (2010-01-02 hour 0)
    assert not np.isnan(speed[1:]).any()
    assert (speed[1:] >= 0).all()


def test_the_whole_beijing_file_sums_back_to_its_cumulated_speed(tmp_path):
    path = shared_file(BEIJING)
    ctx = example(tmp_path, "beijing", committed(path))
    speed = fetch_all(ctx).frame["wind_speed_10m"].to_numpy()
    raw = pd.read_csv(path)
    run = (raw["cbwd"] != raw["cbwd"].shift()).cumsum()
    assert np.isnan(speed).sum() == 1  # the first row only
    rebuilt = pd.Series(speed).fillna(raw["Iws"].iloc[0]).groupby(run).cumsum()
    np.testing.assert_allclose(rebuilt, raw["Iws"], atol=1e-9)
    assert (speed[1:] >= 0).all()
    assert np.nanmax(speed) < 25


def test_a_compass_category_the_mapping_lacks_is_refused(tmp_path):
    text = committed(BEIJING_SLICE).replace(",cv,", ",SW,")
    ctx = example(tmp_path, "beijing", text)
    with pytest.raises(CsvImportError) as err:
        fetch_all(ctx)
    assert ("column 'cbwd': 5 row(s) among rows 1..72 hold compass categories that "
            "source.csv.mapping.wind.directions does not map (['SW'])") in str(err.value)


def test_a_cumulated_speed_out_of_time_order_is_refused(tmp_path):
    lines = committed(BEIJING_SLICE).splitlines(keepends=True)
    lines[10], lines[11] = lines[11], lines[10]
    ctx = example(tmp_path, "beijing", "".join(lines))
    with pytest.raises(CsvImportError) as err:
        fetch_all(ctx)
    message = str(err.value)
    assert "column 'Iws' is cumulated (source.csv.mapping.wind.speed_cumulated)" in message
    assert "rows of 'beijing' are not in time order (1 row(s)" in message
    assert "set speed_cumulated: false" in message


def test_the_beijing_example_imports_its_slice_through_ingest(tmp_path):
    ctx = example(tmp_path, "beijing", committed(BEIJING_SLICE))
    report = ingest.run(ctx, start="2009-12-31", end="2010-01-05")
    stored = read_raw(ctx.paths.raw_dir, "csv")
    assert report.rows_valid == 72
    assert report.rows_quarantined == 0
    assert stored["time"].iloc[0] == ts("2009-12-31T15:00")
    assert {"cov_dew_point", "cov_snow_hours", "cov_rain_hours"} <= set(stored.columns)
    assert stored["wind_speed_10m"].notna().sum() == 71


# ------------------------------------------------------------------ Detroit: long format


def test_detroit_long_format_gives_one_row_per_site_and_hour_in_canonical_units(tmp_path):
    """ppm gases become ug/m3 (25 degC, 1 atm), µg/m³ particles stay; OpenAQ's hour-ending
    label 01:00Z is the hour 00:00-01:00Z."""
    ctx = example(tmp_path, "detroit", committed(DETROIT_SLICE))
    result = fetch_all(ctx)
    frame = result.frame.set_index(["location_id", "time"])
    assert sorted(frame.index.get_level_values(0).unique()) == ["1385", "1998", "7002"]
    windsor = frame.loc[("1385", ts("2022-10-28T00:00"))]  # the file's 01:00 row
    assert windsor["o3"] == pytest.approx(ugm3(0.02, "o3"))
    assert windsor["pm2_5"] == 12.0
    military = frame.loc[("7002", ts("2022-10-18T23:00"))]  # the file's 2022-10-19 00:00
    assert military["no2"] == pytest.approx(ugm3(0.0057, "no2"))
    assert military["pm2_5"] == 2.5
    assert np.isnan(military["so2"])  # negative: quarantined, not stored
    assert len(frame) == 5 + 3 + 3
    # the 11 other stations of the example's locations are not in this slice at all
    assert set(result.failures) == set(ctx.params.location_ids) - {"1385", "1998", "7002"}


def test_detroit_negative_readings_are_quarantined_without_losing_their_hour(tmp_path):
    ctx = example(tmp_path, "detroit", committed(DETROIT_SLICE))
    report = ingest.run(ctx, start="2022-10-18", end="2022-10-29",
                        locations="1385,1998,7002")
    stored = read_raw(ctx.paths.raw_dir, "csv").set_index(["location_id", "time"])
    quarantine = pd.read_parquet(ctx.paths.ingest_quarantine_dir / "source=csv")
    negative = quarantine[quarantine["reason"].str.contains("negative")]
    assert sorted(negative["reason"]) == [
        "pm2_5 reading -0.2 µg/m³ is negative: a concentration or amount cannot be below zero",
        *["so2 reading -0.0001 ppm is negative: a concentration or amount cannot be below "
          "zero"] * 2,
        "so2 reading -0.0002 ppm is negative: a concentration or amount cannot be below zero"]
    assert negative.set_index("location_id").loc["7002", "so2"].round(3).tolist() == [
        round(ugm3(-0.0001, "so2"), 3)] * 2 + [round(ugm3(-0.0002, "so2"), 3)]
    # the other parameters of those hours are stored
    assert stored.loc[("7002", ts("2022-10-18T23:00")), "pm2_5"] == 2.5
    assert stored.loc[("1998", ts("2022-10-19T20:00")), "pm10"] == 10.0
    assert np.isnan(stored.loc[("1998", ts("2022-10-19T20:00")), "pm2_5"])
    assert report.quality.quarantine_reasons == {"so2_negative": 3, "pm2_5_negative": 1,
                                                 "duplicate_key": 6}


def test_detroit_repeated_keys_are_quarantined_with_their_reason(tmp_path):
    ctx = example(tmp_path, "detroit", committed(DETROIT_SLICE))
    result = fetch_all(ctx)
    repeated = result.quarantine[result.quarantine["reason"].str.startswith("duplicate")]
    assert len(repeated) == 6  # 3 ozone and 3 PM2.5 hours of Windsor Downtown 1, twice each
    assert set(repeated["reason"]) == {
        f"duplicate reading: {v} of this location and hour appears 2 times in {DETROIT} with "
        "the same value; one copy was kept" for v in ("o3", "pm2_5")}
    # a repeated key with another value: the last one in the file wins, the other is kept aside
    text = committed(DETROIT_SLICE).replace(
        "2022-10-28 02:00:00+00:00,pm25,4.0,µg/m³,2479,1385", "2022-10-28 02:00:00+00:00,pm25,"
        "40.0,µg/m³,2479,1385", 1)
    result = fetch_all(example(tmp_path / "conflict", "detroit", text))
    conflict = result.quarantine[result.quarantine["pm2_5"] == 40.0]
    assert conflict["reason"].tolist() == [
        f"duplicate reading: pm2_5 of this location and hour appears 2 times in {DETROIT} "
        "with different values (40, 4); the last one in the file was kept"]
    stored = result.frame.set_index(["location_id", "time"])
    assert stored.loc[("1385", ts("2022-10-28T01:00")), "pm2_5"] == 4.0


def test_a_unit_spelling_nobody_knows_is_refused_naming_column_rows_and_option(tmp_path):
    text = committed(DETROIT_SLICE).replace(",ppm,", ",ppmv,")
    ctx = example(tmp_path, "detroit", text)
    with pytest.raises(CsvImportError) as err:
        fetch_all(ctx)
    assert ("column 'units': 3 no2 row(s) among rows 1..31 are in unit 'ppmv': no2: unknown "
            "unit 'ppmv'") in str(err.value)
    assert "set source.csv.mapping.unit_values" in str(err.value)
    config = ctx.params.source.csv
    config = config.model_copy(update={"mapping": config.mapping.model_copy(
        update={"unit_values": {"ppmv": "ppm"}})})
    frame = CsvSource(config, data_dir=ctx.settings.csv_dir).fetch(
        ctx.params.locations, ts("2022-01-01"), ts("2023-01-01")).frame
    assert frame["no2"].max() == pytest.approx(ugm3(0.0057, "no2"))


def test_backfill_of_the_detroit_example_reports_each_chunk(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    ctx = example(tmp_path, "detroit", committed(DETROIT_SLICE))
    report = backfill.run(ctx, start="2022-10-15", end="2022-11-01", chunk_days=7,
                          locations="1385,1998,7002", progress=False)
    chunks = [r.getMessage() for r in caplog.records if " chunk " in r.getMessage()]
    assert [c.split(" chunk ")[1][:3] for c in chunks] == ["1/3", "2/3", "3/3"]
    assert "chunk 1/3 2022-10-15 00:00:00+00:00 .. 2022-10-22 00:00:00+00:00: 6 rows valid, " \
           "4 quarantined" in chunks[0]
    assert report.rows_valid == 11
    assert report.chunk_failures == {}


@pytest.fixture(scope="module")
def detroit_october(tmp_path_factory) -> str:
    """Every row of October 2022 (all sites) of the real file, made here."""
    path = shared_file(DETROIT)
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        header = next(handle)
        rows = [line for line in handle if line.startswith("2022-10-")]
    return header + "".join(rows)


def test_a_month_of_the_real_detroit_file(tmp_path, detroit_october):
    raw = pd.read_csv(io.StringIO(detroit_october), dtype={"location_id": str})
    ctx = example(tmp_path, "detroit", detroit_october)
    result = fetch_all(ctx, "2022-09-30", "2022-11-02")
    assert result.failures.keys() == set(ctx.params.location_ids) - set(raw["location_id"])
    negatives = int((raw["value"] < 0).sum())
    repeated = int(raw.duplicated(["location_id", "datetime", "parameter"]).sum())
    reasons = result.quarantine_reasons
    assert sum(n for r, n in reasons.items() if r.endswith("_negative")) == negatives > 0
    assert reasons.get("duplicate_key", 0) == repeated
    readings = raw[(raw["value"] >= 0)].drop_duplicates(["location_id", "datetime",
                                                          "parameter"])
    stored = result.frame.melt(id_vars=["location_id", "time"],
                               value_vars=["pm2_5", "pm10", "no2", "o3", "so2", "co"]).dropna()
    assert len(stored) == len(readings) - reasons.get("so2_out_of_range", 0)
    assert set(raw["units"]) == {"ppm", "µg/m³"}
