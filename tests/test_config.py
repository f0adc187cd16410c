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
