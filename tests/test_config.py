"""params.yaml loads into typed objects; bad settings stop with the key named."""

from __future__ import annotations

import pytest
import yaml

from pipeline.config import ConfigError, load_params, parse_params
from tests.conftest import REPO


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_load_with_defaults():
    params = load_params(REPO / "params.yaml")
    assert params.targets == ["pm2_5"]
    assert params.horizons == [1, 6, 12, 24]
    assert len(params.locations) == 5
    assert params.source.kind == "synthetic"


def _differences(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in _differences(a.get(k), b.get(k), f"{path}.{k}".lstrip("."))]
    return [] if a == b else [f"{path}: params.yaml {a!r} != code {b!r}"]


def test_params_yaml_states_the_code_defaults():
    """The defaults decided on real data (docs/benchmarks.md) live twice: in params.yaml, which
    users copy, and in pipeline/config.py, which fills every key a params.yaml leaves out (the
    examples/realdata configs, tests). A change to one without the other fails here."""
    raw = repo_params()
    stated = parse_params(raw).model_dump(mode="json")
    coded = parse_params({"locations": raw["locations"]}).model_dump(mode="json")
    assert _differences(stated, coded) == []
    assert stated["model"]["loss"] == "absolute_error"  # the comparison is not vacuous
    raw["model"]["selection"]["ensemble"] = 3
    assert _differences(parse_params(raw).model_dump(mode="json"), coded) == [
        "model.selection.ensemble: params.yaml 3 != code 2"]


@pytest.mark.parametrize(
    ("mutate", "key", "message"),
    [
        (lambda p: p["locations"][0].update(latitude=200), "locations.0.latitude", "less than"),
        (lambda p: p.update(horizons=[0, 6]), "horizons.0", "greater than"),
        (lambda p: p.update(targets=["pm25"]), "targets.0", "pm2_5"),
        (lambda p: p["model"].update(learning_rat=0.1), "model.learning_rat", "unknown key"),
        (lambda p: p.update(colour="blue"), "colour", "unknown key"),
        (lambda p: p["model"].update(max_iter="many"), "model.max_iter", "integer"),
        (lambda p: p["locations"][1].update(timezone="Mars/Olympus"), "locations.1.timezone",
         "unknown IANA timezone"),
        (lambda p: p["source"].update(start="2026-01-01", end="2025-01-01"), "source",
         "must be after"),
        (lambda p: p["locations"].append(dict(p["locations"][0])), "locations", "duplicate"),
    ],
)
def test_invalid_settings_name_the_key(mutate, key, message):
    raw = repo_params()
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    text = str(err.value)
    assert key in text
    assert message in text


@pytest.mark.parametrize("targets", [["no2"], ["o3"], ["pm2_5", "no2", "o3"]])
def test_other_pollutants_are_valid_targets(targets):
    raw = repo_params()
    raw["targets"] = targets
    assert parse_params(raw).targets == targets


def test_missing_and_broken_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("locations: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(bad)


def _params_file(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


MINIMAL = "locations:\n  - {id: a, name: A, latitude: 1, longitude: 2}\n"


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path):
    """YAML keeps the last duplicate silently: targets would become [no2]."""
    path = _params_file(tmp_path, MINIMAL + "targets: [pm2_5]\nhorizons: [1]\ntargets: [no2]\n")
    with pytest.raises(ConfigError, match=r"key 'targets' appears twice \(line 3 and line 5\)"):
        load_params(path)
    nested = _params_file(tmp_path, MINIMAL + "model:\n  max_iter: 10\n  max_iter: 20\n")
    with pytest.raises(ConfigError, match=rf"(?s){nested}: .*'max_iter' appears twice"):
        load_params(nested)


@pytest.mark.parametrize(
    ("setting", "key", "message"),
    [
        ("model: {max_iter: true}", "model.max_iter", "valid integer"),
        ("model: {max_iter: '150'}", "model.max_iter", "valid integer"),
        ("model: {learning_rate: '0.1'}", "model.learning_rate", "valid number"),
        ("model: {max_iter: 150.5}", "model.max_iter", "valid integer"),
        ("model: {l2_regularization: .inf}", "model.l2_regularization", "finite number"),
        ("model: {l2_regularization: .nan}", "model.l2_regularization", "finite number"),
        ("drift: {psi_threshold: .inf}", "drift.psi_threshold", "finite number"),
        ("history_days: 1e18", "history_days", "valid integer"),
        ("history_days: 1000000000000000000", "history_days", "less than or equal to 36600"),
        ("model: {early_stopping: 'yes'}", "model.early_stopping", "valid boolean"),
        ("source: {start: 1000-01-01}", "source.start", "greater than or equal to 1900-01-01"),
        ("source: {end: '9999-01-01'}", "source.end", "less than or equal to 2200-01-01"),
    ],
)
def test_numbers_are_strict_finite_and_bounded(tmp_path, setting, key, message):
    with pytest.raises(ConfigError) as err:
        load_params(_params_file(tmp_path, MINIMAL + setting + "\n"))
    assert key in str(err.value)
    assert message in str(err.value)


def test_quoted_dates_and_integers_for_floats_still_load(tmp_path):
    params = load_params(_params_file(
        tmp_path, MINIMAL + "source: {start: '2024-01-01', end: 2024-02-01}\n"
        "model: {learning_rate: 1, l2_regularization: 0}\n"))
    assert str(params.source.start) == "2024-01-01"
    assert params.model.learning_rate == 1.0


def test_a_file_that_is_not_utf8_is_named_with_the_byte(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(MINIMAL.encode() + b"# caf\xe9 in Latin-1\n")
    with pytest.raises(ConfigError, match=rf"{path}: not UTF-8 text \(byte 0xe9 at offset"):
        load_params(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_params(tmp_path)  # a directory


def csv_params(csv: dict) -> dict:
    return {"locations": [{"id": "x", "name": "x", "latitude": 0, "longitude": 0}],
            "source": {"kind": "csv", "csv": {"path": "a.csv", "location_id": "x", **csv}}}


@pytest.mark.parametrize("zone", ["+08:00", "UTC+08:00", "+0800", "GMT-05:00", "Etc/GMT-8",
                                  "Asia/Shanghai"])
def test_csv_time_zone_is_a_named_zone_or_a_fixed_offset(zone):
    assert parse_params(csv_params({"time_zone": zone})).source.csv.time_zone == zone


@pytest.mark.parametrize("zone", ["+08:70", "+15:00", "+08:10", "China"])
def test_impossible_csv_offsets_are_refused(zone):
    with pytest.raises(ConfigError, match="source.csv.time_zone"):
        parse_params(csv_params({"time_zone": zone}))


@pytest.mark.parametrize(("mapping", "message"), [
    ({"time": {"year": "y", "month": "m", "day": "d"}}, "source.csv.mapping.time"),
    ({"wind": {"direction": "cbwd", "directions": {"NE": 400}}}, "less than or equal to 360"),
    ({"wind": {"direction": "cbwd", "directions": {}}}, "at least 1 item"),
    ({"wind": {"direction": "cbwd", "directions": {"NE": 45}, "speed_cumulated": True}},
     "speed_cumulated needs mapping.wind.speed"),
    ({"wind": {"direction": "cbwd", "directions": {"NE": 45}, "speed": "Iws",
               "speed_unit": "furlongs"}}, "wind_speed_10m: unknown unit 'furlongs'"),
    ({"wind": {"direction": "d", "directions": {"N": 0}}, "columns": {"wind_speed_10m": "ws"}},
     "mapping.wind and mapping.columns both name ['wind_speed_10m']"),
    ({"wind": {"direction": "d", "directions": {"N": 0}}, "parameter": "p", "value": "v"},
     "mapping.wind is for the wide layout"),
    ({"latitude": "lat"}, "mapping.latitude and mapping.longitude go together"),
])
def test_csv_mapping_mistakes_name_the_key(mapping, message):
    with pytest.raises(ConfigError, match="source.csv.mapping") as err:
        parse_params(csv_params({"mapping": mapping}))
    assert message in str(err.value)
