"""CSV/Parquet history import: messy real-world files become the canonical rows they should."""

from __future__ import annotations

import gc
import gzip
import re
import textwrap

import numpy as np
import pandas as pd
import pytest

from pipeline.config import ConfigError, Location, parse_params
from pipeline.config import CsvSource as CsvConfig
from pipeline.context import Context
from pipeline.errors import IngestError
from pipeline.io.sources.csv_import import CsvImportError, CsvSource
from pipeline.io.storage import read_raw
from pipeline.schema import COLUMNS, MOLAR_VOLUME_L, MOLECULAR_WEIGHT
from pipeline.settings import Settings
from pipeline.steps import ingest
from tests.conftest import make_project

BERLIN = Location(id="berlin", name="Berlin", latitude=52.52, longitude=13.405)
DELHI = Location(id="delhi", name="Delhi", latitude=28.6139, longitude=77.209)
NO2_PPB = MOLECULAR_WEIGHT["no2"] / MOLAR_VOLUME_L  # ug/m3 per ppb


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


# A national-network export: German local time across the 2024-10-27 fall-back (02:00 happens
# twice), an exact duplicate hour (03:00), a conflicting duplicate hour (05:00), NO2 in ppb,
# an empty cell, a "n/a", and no SO2 column although the mapping names one.
MESSY = textwrap.dedent("""\
    station;date;PM2.5;NO2 (ppb);temp
    DEBE010;27.10.2024 00:00;10;20;8.5
    DEBE010;27.10.2024 01:00;11;21;8.1
    DEBE010;27.10.2024 02:00;12;22;7.9
    DEBE010;27.10.2024 02:00;13;23;7.7
    DEBE010;27.10.2024 03:00;14;;7.5
    DEBE010;27.10.2024 03:00;14;;7.5
    DEBE010;27.10.2024 04:00;n/a;25;7.0
    DEBE010;27.10.2024 05:00;99;26;6.0
    DEBE010;27.10.2024 05:00;16;26;
    """)
MESSY_CONFIG = {
    "path": "messy.csv",
    "separator": ";",
    "time_zone": "Europe/Berlin",
    "time_format": "%d.%m.%Y %H:%M",
    "mapping": {
        "time": "date",
        "location": "station",
        "location_values": {"DEBE010": "berlin"},
        "columns": {"pm2_5": "PM2.5", "no2": "NO2 (ppb)", "temperature_2m": "temp",
                    "so2": "SO2 (ppb)"},
        "units": {"no2": "ppb", "so2": "ppb"},
    },
}
# what those rows are in UTC and canonical units (file order kept)
MESSY_EXPECTED = pd.DataFrame({
    "time": [ts("2024-10-26T22:00"), ts("2024-10-26T23:00"), ts("2024-10-27T00:00"),
             ts("2024-10-27T01:00"), ts("2024-10-27T02:00"), ts("2024-10-27T02:00"),
             ts("2024-10-27T03:00"), ts("2024-10-27T04:00"), ts("2024-10-27T04:00")],
    "pm2_5": [10, 11, 12, 13, 14, 14, np.nan, 99, 16],
    "no2": [v * NO2_PPB for v in (20, 21, 22, 23)] + [np.nan, np.nan]
    + [v * NO2_PPB for v in (25, 26, 26)],
    "temperature_2m": [8.5, 8.1, 7.9, 7.7, 7.5, 7.5, 7.0, 6.0, np.nan],
})


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def source(tmp_path, config: dict) -> CsvSource:
    return CsvSource(CsvConfig.model_validate(config), base_dir=tmp_path)


def test_messy_export_gives_the_canonical_rows(tmp_path, caplog):
    write(tmp_path, "messy.csv", MESSY)
    result = source(tmp_path, MESSY_CONFIG).fetch([BERLIN], ts("2024-10-26"), ts("2024-10-28"))

    frame = result.frame
    assert result.failures == {}
    assert list(frame.columns) == list(COLUMNS)
    assert (frame["location_id"] == "berlin").all()
    assert list(frame["time"]) == list(MESSY_EXPECTED["time"])
    for column in ("pm2_5", "no2", "temperature_2m"):
        np.testing.assert_allclose(frame[column], MESSY_EXPECTED[column], err_msg=column)
    assert frame["so2"].isna().all()  # the mapped column is absent: NaN, and said so
    assert "'SO2 (ppb)' (so2) is missing in 1 of 1 file(s)" in caplog.text
    assert frame["pm10"].isna().all()  # not in the file at all


def test_messy_export_through_ingest_stores_each_hour_once_and_quarantines_the_conflict(
        tmp_path):
    root = make_project(tmp_path / "project", {
        "source": {"kind": "csv", "start": "2024-10-26", "end": "2024-10-28",
                   "csv": MESSY_CONFIG}})
    write(root, "messy.csv", MESSY)
    ctx = Context.load(root, settings=Settings())
    report = ingest.run(ctx, locations="berlin")

    stored = read_raw(ctx.paths.raw_dir, "csv")
    assert list(stored["time"]) == sorted(set(MESSY_EXPECTED["time"]))  # 7 distinct hours
    at = stored.set_index("time")
    assert at.loc[ts("2024-10-27T00:00"), "pm2_5"] == 12  # first 02:00 = summer time
    assert at.loc[ts("2024-10-27T01:00"), "pm2_5"] == 13  # second 02:00 = winter time
    assert at.loc[ts("2024-10-27T04:00"), "pm2_5"] == 16  # the later duplicate wins
    assert at.loc[ts("2024-10-27T04:00"), "no2"] == pytest.approx(26 * NO2_PPB)
    assert report.quality.rows_per_location == {"berlin": 7}
    assert report.quality.quarantine_reasons == {"duplicate_key": 1}
    quarantine = pd.read_parquet(ctx.paths.ingest_quarantine_dir / "source=csv")
    assert quarantine["pm2_5"].tolist() == [99]
    assert "duplicate" in quarantine["reason"].iloc[0]


def test_local_times_that_do_not_exist_or_cannot_be_told_apart_are_quarantined(tmp_path):
    # 2024-03-31 02:00 does not exist in Berlin; 2024-10-27 02:00 appears only once
    write(tmp_path, "dst.csv", textwrap.dedent("""\
        time,pm2_5
        2024-03-31 01:00,5
        2024-03-31 02:00,6
        2024-03-31 03:00,7
        2024-10-27 02:00,8
        """))
    root = make_project(tmp_path / "project", {
        "source": {"kind": "csv", "start": "2024-03-01", "end": "2024-11-01",
                   "csv": {"path": str(tmp_path / "dst.csv"), "time_zone": "Europe/Berlin",
                           "location_id": "berlin"}}})
    ctx = Context.load(root, settings=Settings())
    report = ingest.run(ctx, locations="berlin")
    stored = read_raw(ctx.paths.raw_dir, "csv")
    assert list(stored["time"]) == [ts("2024-03-31T00:00"), ts("2024-03-31T01:00")]
    assert stored["pm2_5"].tolist() == [5, 7]
    assert report.quality.quarantined == 2
    quarantine = pd.read_parquet(ctx.paths.ingest_quarantine_dir / "source=csv")
    reasons = dict(zip(quarantine["pm2_5"], quarantine["reason"], strict=True))
    assert sorted(reasons) == [6, 8]
    # the reason says what is wrong, and nothing else: two hours without a time are not
    # "duplicates" of each other
    assert reasons[6] == ("hour missing at a daylight-saving change: local time 2024-03-31 "
                          "02:00 does not exist in Europe/Berlin; check source.csv.time_zone "
                          "(a file in UTC or GMT needs 'UTC')")
    assert reasons[8].startswith("hour repeated at a daylight-saving change: local time "
                                 "2024-10-27 02:00 occurs twice in Europe/Berlin but once")
    assert report.quality.quarantine_reasons == {"time_unknown": 2}


def test_a_gmt_file_configured_as_london_is_told_to_check_the_time_zone(tmp_path):
    """The issue's export: hourly GMT values, configured as Europe/London.

    Summer hours are shifted (nothing in the file can tell); the two change days lose one
    hour each, quarantined with a reason naming the setting, never as "duplicates".
    """
    times = pd.date_range("2025-03-29", "2025-10-28", freq="h", inclusive="left")
    write(tmp_path, "gmt.csv", "time,no2\n" + "".join(
        f"{t:%Y-%m-%d %H:%M},{10 + i % 7}\n" for i, t in enumerate(times)))
    root = make_project(tmp_path / "project", {
        "source": {"kind": "csv", "start": "2025-03-01", "end": "2025-11-01",
                   "csv": {"path": str(tmp_path / "gmt.csv"), "time_zone": "Europe/London",
                           "location_id": "berlin"}}})
    ctx = Context.load(root, settings=Settings())
    report = ingest.run(ctx, locations="berlin")
    quarantine = pd.read_parquet(ctx.paths.ingest_quarantine_dir / "source=csv")
    assert len(quarantine) == 2
    assert not any("duplicate" in r for r in quarantine["reason"])
    assert all("check source.csv.time_zone" in r for r in quarantine["reason"])
    assert "2025-03-30 01:00 does not exist in Europe/London" in quarantine["reason"].iloc[0]
    assert "2025-10-26 01:00 occurs twice in Europe/London" in quarantine["reason"].iloc[1]
    assert report.quality.quarantine_reasons == {"time_unknown": 2}
    assert report.rows_valid == len(times) - 2


def test_openaq_long_export_with_offsets_and_mixed_units(tmp_path):
    write(tmp_path, "openaq.csv", textwrap.dedent("""\
        location_id,sensors_id,location,datetime,lat,lon,parameter,units,value
        2178,3917,Berlin Mitte,2024-01-01T01:00:00+01:00,52.51,13.41,pm25,µg/m³,12.5
        2178,3918,Berlin Mitte,2024-01-01T01:00:00+01:00,52.51,13.41,o3,ppm,0.031
        2178,3919,Berlin Mitte,2024-01-01T01:00:00+01:00,52.51,13.41,um003,particles/cm³,1500
        2178,3917,Berlin Mitte,2024-01-01T02:00:00+01:00,52.51,13.41,pm25,µg/m³,14.0
        2178,3920,Berlin Mitte,2024-01-01T02:00:00+01:00,52.51,13.41,no2,µg/m³,33.0
        8118,5001,Delhi ITO,2024-01-01T05:30:00+05:30,28.63,77.24,pm25,µg/m³,180.0
        9999,7001,Elsewhere,2024-01-01T00:00:00Z,1.0,1.0,pm25,µg/m³,3.0
        """))
    config = {"path": "openaq.csv",
              "mapping": {"time": "datetime", "location": "location_id",
                          "location_values": {"2178": "berlin", "8118": "delhi"},
                          "parameter": "parameter", "value": "value", "unit": "units"}}
    result = source(tmp_path, config).fetch([BERLIN, DELHI], ts("2024-01-01"), ts("2024-01-02"))
    frame = result.frame.set_index(["location_id", "time"])
    assert result.failures == {}
    assert list(frame.index) == [("berlin", ts("2024-01-01T00:00")),
                                 ("berlin", ts("2024-01-01T01:00")),
                                 ("delhi", ts("2024-01-01T00:00"))]
    assert frame["pm2_5"].tolist() == [12.5, 14.0, 180.0]
    o3 = 0.031 * 1000 * MOLECULAR_WEIGHT["o3"] / MOLAR_VOLUME_L
    assert frame.loc[("berlin", ts("2024-01-01T00:00")), "o3"] == pytest.approx(o3)
    assert np.isnan(frame.loc[("berlin", ts("2024-01-01T01:00")), "o3"])
    assert frame.loc[("berlin", ts("2024-01-01T01:00")), "no2"] == 33.0


def test_glob_of_parquet_and_csv_files_where_one_lacks_a_column(tmp_path):
    pd.DataFrame({
        "when": pd.to_datetime(["2024-06-01 10:00", "2024-06-01 11:00"]),  # naive local
        "site": ["B", "B"], "pm25": [7.0, 8.0], "temp_f": [68.0, 77.0],
    }).to_parquet(tmp_path / "export_1.parquet")
    write(tmp_path, "export_2.csv", "when,site,pm25\n2024-06-01 12:00,B,9.0\n")
    config = {"path": "export_*", "time_zone": "Europe/Berlin",
              "mapping": {"time": "when", "location": "site", "location_values": {"B": "berlin"},
                          "columns": {"pm2_5": "pm25", "temperature_2m": "temp_f"},
                          "units": {"temperature_2m": "°F"}}}
    result = source(tmp_path, config).fetch([BERLIN], ts("2024-06-01"), ts("2024-06-02"))
    assert list(result.frame["time"]) == [ts("2024-06-01T08:00"), ts("2024-06-01T09:00"),
                                          ts("2024-06-01T10:00")]
    assert result.frame["pm2_5"].tolist() == [7.0, 8.0, 9.0]
    np.testing.assert_allclose(result.frame["temperature_2m"], [20.0, 25.0, np.nan])


def test_window_and_locations_select_rows_and_a_location_the_file_lacks_fails(tmp_path):
    """A station whose rows all lie outside the window (a monitor that started later, as
    Detroit's do) has nothing to store there; one the file never names fails."""
    write(tmp_path, "two.csv", "time,loc,pm2_5\n2024-01-01 00:00,berlin,1\n"
                               "2024-01-02 00:00,berlin,2\n2024-01-01 00:00,delhi,3\n")
    config = {"path": "two.csv", "mapping": {"location": "loc"}}
    result = source(tmp_path, config).fetch([BERLIN, DELHI], ts("2024-01-02"), ts("2024-01-03"))
    assert result.frame["pm2_5"].tolist() == [2]
    assert result.failures == {}
    london = Location(id="london", name="London", latitude=51.5, longitude=-0.12)
    result = source(tmp_path, config).fetch([BERLIN, london], ts("2024-01-02"), ts("2024-01-03"))
    assert set(result.failures) == {"london"}
    assert ("no rows for london in two.csv: column 'loc' never names it (it names ['berlin', "
            "'delhi']") in result.failures["london"]


@pytest.mark.parametrize(("text", "config", "message"), [
    ("when,pm2_5\n2024-01-01 00:00,1\n", {}, "no time column 'time' (columns: ['when', 'pm2_5'])"),
    ("time,pm2_5\n2024-01-01T00:00+01:00,1\n2024-01-01 01:00,2\n", {},
     "mixes times with and without a UTC offset"),
    ("time,humidity\n2024-01-01 00:00,1\n", {}, "no value column found"),
    ("time,pm2_5\n2024-01-01 00:00,1\n", {"mapping": {"location": "station"}},
     "no location column 'station'"),
    ("time,parameter,value,unit\n2024-01-01 00:00,pm25,1,ppb\n",
     {"mapping": {"parameter": "parameter", "value": "value", "unit": "unit"}},
     "pm2_5: unit 'ppb' is a gas mixing ratio"),
    ("time,parameter,value,unit\n2024-01-01 00:00,no2,1,furlongs\n",
     {"mapping": {"parameter": "parameter", "value": "value", "unit": "unit"}},
     "no2: unknown unit 'furlongs'"),
])
def test_unusable_files_are_clear_errors(tmp_path, text, config, message):
    write(tmp_path, "bad.csv", text)
    base = {"path": "bad.csv", "location_id": "berlin"}
    merged = {**base, **config}
    with pytest.raises(CsvImportError) as err:
        source(tmp_path, merged).fetch([BERLIN], ts("2024-01-01"), ts("2024-01-02"))
    assert message in str(err.value)


def test_no_matching_file_and_no_location_are_clear_errors(tmp_path):
    with pytest.raises(CsvImportError, match="no file matches"):
        source(tmp_path, {"path": "nope/*.csv", "location_id": "berlin"}).files()
    with pytest.raises(CsvImportError, match="mapping.location .* or location_id"):
        source(tmp_path, {"path": "x.csv"})
    with pytest.raises(CsvImportError, match="path is empty"):
        source(tmp_path, {"location_id": "berlin"})


def test_mapping_mistakes_are_refused_when_params_are_loaded():
    base = {"locations": [{"id": "berlin", "name": "B", "latitude": 1, "longitude": 1}]}
    cases = {
        "unknown unit": ({"units": {"no2": "parts per zillion"}}, "no2: unknown unit"),
        "unknown variable": ({"columns": {"pm1": "PM1"}}, "unknown variable(s) ['pm1']"),
        "half a long layout": ({"parameter": "parameter"}, "go together"),
    }
    for mapping, message in cases.values():
        raw = {**base, "source": {"kind": "csv", "csv": {"path": "x.csv", "mapping": mapping}}}
        with pytest.raises(ConfigError, match="source.csv.mapping") as err:
            parse_params(raw)
        assert message in str(err.value)


def test_ingest_fails_loudly_when_the_file_lacks_a_location(tmp_path):
    root = make_project(tmp_path / "project", {
        "source": {"kind": "csv", "start": "2024-01-01", "end": "2024-01-02",
                   "csv": {"path": str(write(tmp_path, "b.csv", "time,loc,pm2_5\n"
                                             "2024-01-01 00:00,berlin,1\n")),
                           "mapping": {"location": "loc"}}}})
    ctx = Context.load(root, settings=Settings())
    with pytest.raises(IngestError, match=r"1 of 2 location\(s\) failed .*no rows for delhi"):
        ingest.run(ctx)
    assert read_raw(ctx.paths.raw_dir, "csv")["location_id"].tolist() == ["berlin"]


def test_gzipped_csv_with_24_00_as_end_of_day(tmp_path):
    (tmp_path / "day.csv.gz").write_bytes(gzip.compress(
        b"time,pm2_5\n2024-01-01 23:00,1\n2024-01-01 24:00,2\n2024-01-02 01:00,3\n"))
    result = source(tmp_path, {"path": "day.csv.gz", "location_id": "berlin"}).fetch(
        [BERLIN], ts("2024-01-01"), ts("2024-01-03"))
    assert list(result.frame["time"]) == [ts("2024-01-01T23:00"), ts("2024-01-02T00:00"),
                                          ts("2024-01-02T01:00")]
    assert result.frame["pm2_5"].tolist() == [1, 2, 3]


# ---------------------------------------------------------- messy exports: detected or refused

JANUARY = pd.date_range("2024-01-01", "2024-01-31 23:00", freq="h")


def january_file(tmp_path, fmt: str, sep: str = ",", decimal: str = ".") -> str:
    lines = [f"date{sep}pm2_5{sep}comment"]
    for i, t in enumerate(JANUARY):
        value = f"{10 + i % 7}.5".replace(".", decimal)
        lines.append(f"{t.strftime(fmt)}{sep}{value}{sep}ok")
    write(tmp_path, "jan.csv", "\n".join(lines) + "\n")
    return "jan.csv"


def test_day_first_dates_are_detected_not_spread_over_the_year(tmp_path, caplog):
    """The old month-first guess put 240 January rows in February-November, dropped 24."""
    caplog.set_level("INFO")
    path = january_file(tmp_path, "%d/%m/%Y %H:%M")
    config = {"path": path, "location_id": "berlin", "mapping": {"time": "date"}}
    result = source(tmp_path, config).fetch([BERLIN], ts("2024-01-01"), ts("2025-01-01"))
    assert list(result.frame["time"]) == list(JANUARY.tz_localize("UTC"))
    assert "dates are day-first" in caplog.text
    assert "column(s) not in the mapping, ignored: ['comment']" in caplog.text


def test_dates_that_read_both_ways_are_refused_naming_the_option(tmp_path):
    text = "date,pm2_5\n" + "".join(f"0{d}/01/2024 00:00,1\n" for d in range(2, 6))
    write(tmp_path, "amb.csv", text)
    config = {"path": "amb.csv", "location_id": "berlin", "mapping": {"time": "date"}}
    with pytest.raises(CsvImportError, match=r"'02/01/2024 00:00' read both day-first and "
                                             r"month-first; set source.csv.day_first"):
        source(tmp_path, config).fetch([BERLIN], ts("2024-01-01"), ts("2025-01-01"))
    stated = source(tmp_path, {**config, "day_first": True}).fetch(
        [BERLIN], ts("2024-01-01"), ts("2025-01-01"))
    assert list(stated.frame["time"]) == [
        ts(f"2024-01-0{d}") for d in range(2, 6)]


def test_semicolon_and_decimal_comma_refused_until_stated(tmp_path):
    """The old reader stored every value as NaN with rc 0 and a warning."""
    path = january_file(tmp_path, "%Y-%m-%d %H:%M", sep=";", decimal=",")
    config = {"path": path, "location_id": "berlin", "mapping": {"time": "date"}}
    with pytest.raises(CsvImportError, match=r"decimal comma \(e.g. '10,5'\); set "
                                             r"source.csv.decimal: ','"):
        source(tmp_path, config).fetch([BERLIN], ts("2024-01-01"), ts("2024-02-01"))
    result = source(tmp_path, {**config, "decimal": ","}).fetch(
        [BERLIN], ts("2024-01-01"), ts("2024-02-01"))
    assert result.frame["pm2_5"].tolist()[:3] == [10.5, 11.5, 12.5]
    assert result.frame["pm2_5"].notna().all()


@pytest.mark.parametrize(("text", "message"), [
    ("time|pm2_5,x\n2024-01-01 00:00|1,2\n", "cannot tell the separator"),
    ("time,pm2_5\n2024-01-01 00:00,high\n2024-01-01 01:00,low\n",
     "no pm2_5 value is a number (e.g. 'high')"),
])
def test_what_stays_ambiguous_is_refused(tmp_path, text, message):
    write(tmp_path, "bad.csv", text)
    with pytest.raises(CsvImportError, match=re.escape(message)):
        source(tmp_path, {"path": "bad.csv", "location_id": "berlin"}).fetch(
            [BERLIN], ts("2024-01-01"), ts("2024-01-02"))


READ_WINDOW = """
import sys
import pandas as pd
from pipeline.config import CsvSource as CsvConfig, Location
from pipeline.io.sources.csv_import import CsvSource
src = CsvSource(CsvConfig(path=sys.argv[1], mapping={"location": "loc"}), base_dir=".")
loc = Location(id="l3", name="x", latitude=0, longitude=0)
start = pd.Timestamp("2020-06-01", tz="UTC")
result = src.fetch([loc], start, start + pd.Timedelta(days=2))
# VmHWM: this process's own peak. ru_maxrss would keep the pytest parent's size across exec
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM:"))
print(len(result.frame), peak_kb // 1024)
"""


@pytest.mark.process
@pytest.mark.slow
def test_a_large_file_is_read_in_bounded_memory(tmp_path):
    """1.5 M rows (10 locations x 17 years): only the window's rows are kept."""
    import subprocess
    import sys

    hours = np.arange(np.datetime64("2010-01-01T00"), np.datetime64("2027-02-10T00"))[:150_000]
    stamps = np.datetime_as_string(hours, unit="m")
    with open(tmp_path / "big.csv", "w") as handle:
        handle.write("time,loc,pm2_5,no2\n")
        for loc in range(10):
            block = pd.DataFrame({"t": stamps, "l": f"l{loc}", "p": np.arange(len(stamps)) % 50,
                                  "n": 3.25})
            block.to_csv(handle, header=False, index=False)
    assert (tmp_path / "big.csv").stat().st_size > 40_000_000
    proc = subprocess.run([sys.executable, "-c", READ_WINDOW, str(tmp_path / "big.csv")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows, max_rss_mb = (int(x) for x in proc.stdout.split())
    assert rows == 48
    assert max_rss_mb < 450, max_rss_mb  # reading it whole took ~900 MB


# ---------------------------------------------------------- time in parts, fixed offsets


def test_a_fixed_offset_has_no_daylight_saving(tmp_path):
    """US Eastern Standard Time all year (-05:00): the spring-forward night of 2024-03-10 has
    every hour, none repeated, none missing (America/New_York would quarantine 02:00)."""
    hours = pd.date_range("2024-03-10 00:00", periods=6, freq="h")
    write(tmp_path, "est.csv", "time,pm2_5\n" + "".join(f"{t:%Y-%m-%d %H:%M},{i}\n"
                                                       for i, t in enumerate(hours)))
    config = {"path": "est.csv", "location_id": "berlin", "time_zone": "-05:00"}
    result = source(tmp_path, config).fetch([BERLIN], ts("2024-03-10"), ts("2024-03-11"))
    assert list(result.frame["time"]) == list(pd.date_range("2024-03-10 05:00", periods=6,
                                                            freq="h", tz="UTC"))
    assert result.time_notes == {}


def test_time_in_four_columns_with_hour_24_and_impossible_dates_quarantined(tmp_path):
    write(tmp_path, "parts.csv", textwrap.dedent("""\
        yr,mo,dy,hr,pm2_5
        2024,1,1,23,1
        2024,1,1,24,2
        2024,2,30,5,3
        2024,1,2,25,4
        2024,1,2,1.5,5
        2024,1,2,,6
        """))
    root = make_project(tmp_path / "project", {
        "source": {"kind": "csv", "start": "2024-01-01", "end": "2024-03-01",
                   "csv": {"path": str(tmp_path / "parts.csv"), "location_id": "berlin",
                           "mapping": {"time": {"year": "yr", "month": "mo", "day": "dy",
                                                "hour": "hr"}}}}})
    ctx = Context.load(root, settings=Settings())
    report = ingest.run(ctx, locations="berlin")
    stored = read_raw(ctx.paths.raw_dir, "csv")
    assert list(stored["time"]) == [ts("2024-01-01T23:00"), ts("2024-01-02T00:00")]
    quarantine = pd.read_parquet(ctx.paths.ingest_quarantine_dir / "source=csv")
    assert sorted(quarantine["reason"]) == sorted([
        "time '2024-2-30-5' cannot be read (source.csv.mapping.time: whole numbers, hour 0-24)",
        "time '2024-1-2-25' cannot be read (source.csv.mapping.time: whole numbers, hour 0-24)",
        "time '2024-1-2-1.5' cannot be read (source.csv.mapping.time: whole numbers, hour 0-24)",
        "time '2024-1-2-' cannot be read (source.csv.mapping.time: whole numbers, hour 0-24)"])
    assert report.quality.quarantine_reasons == {"time_unknown": 4}


def test_a_missing_time_part_column_is_refused_naming_it(tmp_path):
    write(tmp_path, "parts.csv", "year,month,day,pm2_5\n2024,1,1,1\n")
    config = {"path": "parts.csv", "location_id": "berlin",
              "mapping": {"time": {"year": "year", "month": "month", "day": "day",
                                   "hour": "hour"}}}
    with pytest.raises(CsvImportError, match=r"parts.csv: no time column 'hour' \(columns: "
                                             r"\['year', 'month', 'day', 'pm2_5'\]\); set "
                                             r"source.csv.mapping.time"):
        source(tmp_path, config).fetch([BERLIN], ts("2024-01-01"), ts("2024-01-02"))


def test_a_file_is_parsed_once_per_source_and_again_when_it_changes(tmp_path, caplog):
    """A backfill's windows read the file's parsed pieces, not the file; a changed file (size
    or modification time) is parsed again, and the pieces go with the source."""
    caplog.set_level("INFO")
    path = write(tmp_path, "two.csv", "time,loc,pm2_5\n2023-12-31 23:00,berlin,1\n"
                                      "2024-01-01 00:00,berlin,2\n2024-06-01 00:00,berlin,3\n")
    src = source(tmp_path, {"path": "two.csv", "mapping": {"location": "loc"}})
    windows = [(ts("2023-12-01"), ts("2024-01-01")), (ts("2024-01-01"), ts("2024-02-01")),
               (ts("2024-02-01"), ts("2025-01-01"))]
    values = [src.fetch([BERLIN], a, b).frame["pm2_5"].tolist() for a, b in windows]
    assert values == [[1], [2], [3]]
    assert caplog.text.count("row(s) read in") == 1
    path.write_text(path.read_text() + "2024-06-01 01:00,berlin,4\n")
    assert src.fetch([BERLIN], *windows[2]).frame["pm2_5"].tolist() == [3, 4]
    assert caplog.text.count("row(s) read in") == 2
    spools = src._spool_root
    assert spools.is_dir()
    del src
    gc.collect()
    assert not spools.exists()
