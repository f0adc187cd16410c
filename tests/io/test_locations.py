"""params.yaml's locations written or checked from a file's stations (`python -m pipeline
locations`), every mismatch refused naming the station."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from pipeline.config import Location, load_params, parse_params, replace_locations
from pipeline.errors import LocationsMismatch
from pipeline.io import locations
from pipeline.paths import ProjectPaths
from pipeline.steps import locations as step
from tests.conftest import REPO
from tests.io.sources.realdata import COMMITTED

SLICE = COMMITTED / "detroit_windsor_openaq_slice.csv"
PARAMS = textwrap.dedent("""\
    # my Detroit project
    locations: []   # filled by `python -m pipeline locations --write`

    targets: [pm2_5, no2, o3]   # kept as they are

    source:
      kind: csv
      csv:
        path: {path}
        hour_ending: true
        mapping:
          time: datetime
          location: location_id
          location_name: site_name
          latitude: lat
          longitude: lon
          parameter: parameter
          value: value
          unit: units
    """)


def project(tmp_path, text: str | None = None, data: str | None = None) -> ProjectPaths:
    path = tmp_path / "export.csv"
    with open(SLICE, encoding="utf-8", newline="") as handle:
        path.write_text(data if data is not None else handle.read(), encoding="utf-8")
    (tmp_path / "params.yaml").write_text(text or PARAMS.format(path=path))
    return ProjectPaths(tmp_path)


def test_write_fills_the_locations_from_the_stations_and_keeps_the_rest(tmp_path):
    paths = project(tmp_path)
    report = step.run(paths, write=True, timezone="America/Detroit")
    text = paths.params.read_text()
    assert text.startswith("# my Detroit project\nlocations:\n  - {id: '1385', name: Windsor "
                           "Downtown 1, latitude: 42.3144, longitude: -83.0433, timezone: "
                           "America/Detroit}\n")
    assert "targets: [pm2_5, no2, o3]   # kept as they are" in text
    params = load_params(paths.params)
    assert [(loc.id, loc.name) for loc in params.locations] == [
        ("1385", "Windsor Downtown 1"), ("1998", "Dearborn"), ("7002", "Detroit-Military Par")]
    assert report.stations.set_index("id").loc["7002", "rows"] == 9
    # a location already there keeps the name and zone a person gave it
    text = text.replace("name: Dearborn, latitude: 42.3075, longitude: -83.15, timezone: "
                        "America/Detroit", "name: Dearborn (EGLE), latitude: 42.3075, "
                        "longitude: -83.15, timezone: America/New_York")
    paths.params.write_text(text)
    step.run(paths, write=True)
    again = {loc.id: loc for loc in load_params(paths.params).locations}
    assert (again["1998"].name, again["1998"].timezone) == ("Dearborn (EGLE)", "America/New_York")
    assert again["1385"].timezone == "America/Detroit"
    assert step.run(paths).not_imported == []  # and the check passes


def test_check_refuses_each_mismatch_naming_the_station(tmp_path):
    paths = project(tmp_path)
    step.run(paths, write=True, timezone="America/Detroit")
    text = paths.params.read_text()
    moved = text.replace("latitude: 42.3144", "latitude: 42.3244")  # 1.1 km north
    extra = text.replace("\n\ntargets:", "\n  - {id: ghost, name: Ghost, latitude: 1, "
                                           "longitude: 1}\n\ntargets:", 1)
    paths.params.write_text(moved)
    with pytest.raises(LocationsMismatch) as err:
        step.run(paths)
    assert ("location '1385' (Windsor Downtown 1): params.yaml has 42.3244, -83.0433, the file "
            "42.3144, -83.0433 in 16 row(s), 1,112 m apart (more than "
            "source.csv.coordinate_tolerance_m = 200)") in str(err.value)
    paths.params.write_text(extra)
    with pytest.raises(LocationsMismatch, match=r"location 'ghost' \(Ghost\) of params.yaml has "
                                                r"no row in the file\(s\) \(column "
                                                r"'location_id'\)"):
        step.run(paths)


def test_a_station_whose_coordinates_moved_in_the_file_is_refused(tmp_path):
    with open(SLICE, encoding="utf-8", newline="") as handle:
        data = handle.read().replace(",1998,42.3075,-83.15,Dearborn", ",1998,42.3575,-83.15,"
                                     "Dearborn", 1)
    paths = project(tmp_path, data=data)
    with pytest.raises(LocationsMismatch) as err:
        step.run(paths, write=True)
    assert ("station '1998' (Dearborn): its coordinates in columns 'lat', 'lon' are up to "
            "5,560 m apart over 6 row(s) (more than source.csv.coordinate_tolerance_m = 200)"
            ) in str(err.value)
    assert "locations: []" in paths.params.read_text()  # nothing written


@pytest.mark.process
def test_the_command_line_names_the_mismatch_and_fails(tmp_path):
    paths = project(tmp_path)
    env = {**os.environ, "AQ_PROJECT_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    run = [sys.executable, "-m", "pipeline", "locations"]
    checked = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120,
                             check=False)
    assert checked.returncode == 1
    assert "has no locations; the file(s) have 3 station(s): run `python -m pipeline locations " \
           "--write`" in checked.stderr
    written = subprocess.run([*run, "--write", "--timezone", "America/Toronto"], env=env,
                             capture_output=True, text=True, timeout=120, check=False)
    assert written.returncode == 0, written.stderr
    assert len(load_params(paths.params).locations) == 3
    assert subprocess.run(run, env=env, capture_output=True, timeout=120,
                          check=False).returncode == 0


def test_replace_locations_keeps_comments_and_other_keys():
    berlin = Location(id="berlin", name="Berlin: Mitte", latitude=52.52, longitude=13.405)
    text = ("# top\nlocations:\n- id: old\n  name: Old\n  latitude: 0\n  longitude: 0\n\n"
            "# targets below\ntargets: [pm2_5]\n")
    assert replace_locations(text, [berlin]) == (
        "# top\nlocations:\n  - {id: berlin, name: 'Berlin: Mitte', latitude: 52.52, "
        "longitude: 13.405, timezone: UTC}\n\n# targets below\ntargets: [pm2_5]\n")
    assert replace_locations("# only a comment\ntargets: [no2]\n", [berlin]).startswith(
        "# only a comment\nlocations:\n  - {id: berlin")


def test_default_timezone_of_new_locations():
    base = {"locations": [{"id": "x", "name": "x", "latitude": 0, "longitude": 0}],
            "source": {"kind": "csv", "csv": {"path": "a.csv", "location_id": "x"}}}
    def zone(time_zone: str) -> str:
        raw = {**base, "source": {**base["source"], "csv": {**base["source"]["csv"],
                                                            "time_zone": time_zone}}}
        return locations.default_timezone(parse_params(raw))

    assert zone("+08:00") == "Etc/GMT-8"  # the IANA name of UTC+8 has the sign inverted
    assert zone("UTC-05:00") == "Etc/GMT+5"
    assert zone("+05:30") == "UTC"  # no whole-hour name: say UTC, --timezone sets it
    assert zone("Europe/Berlin") == "Europe/Berlin"
