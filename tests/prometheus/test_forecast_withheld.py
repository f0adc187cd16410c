"""ForecastWithheld waits longer than the synthetic source's sensor outages withhold a location.

A fresh `make run` followed by a day of the schedule must end with nothing firing (issue 13),
yet a location left without forecasts must alert. The default synthetic source has sensor and
station outages that legitimately withhold a location for hours; the rule's `for:` is tied to
them here, so a change to the generator or to the params.yaml limits that makes ordinary
outages longer than `for:` fails a test instead of paging someone.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import load_params
from pipeline.core.features import (
    FeatureSettings,
    FeatureSpec,
    build_features,
    feature_names,
    features_present,
    hours_since_observed,
    location_codes,
    regular_grid,
)
from pipeline.core.quality import input_problems
from pipeline.core.synthetic import SENSOR_GAP_MEAN_H, STATION_GAP_MEAN_H
from pipeline.core.validation import validate, validate_forecasts
from pipeline.io.metrics import MetricsReporter
from pipeline.io.sources.synthetic import SyntheticSource
from pipeline.settings import Settings
from tests.conftest import REPO
from tests.monitoring import prom_query, running_stack, wait_until

PARAMS = load_params(REPO / "params.yaml")
LIMITS = PARAMS.forecast
# the `make run` year (source.start/end) and the year the schedule runs in now
WINDOW = (pd.Timestamp("2025-01-01", tz="UTC"), pd.Timestamp("2027-01-01", tz="UTC"))


def for_hours(alert: str) -> float:
    """The rule's `for:` in hours (Prometheus durations such as 36h, 1d12h, 90m)."""
    rules = [r for path in sorted((REPO / "prometheus" / "rules").glob("*.yml"))
             for group in yaml.safe_load(path.read_text())["groups"] for r in group["rules"]]
    text = next(r for r in rules if r.get("alert") == alert)["for"]
    parts = re.fullmatch(r"((\d+)d)?((\d+)h)?((\d+)m)?", text)
    if not text or parts is None:
        raise ValueError(f"{alert}: a `for:` of days, hours and minutes, not {text!r}")
    days, hours, minutes = (int(parts.group(i) or 0) for i in (2, 4, 6))
    return days * 24 + hours + minutes / 60


def longest_run(flags: np.ndarray) -> int:
    edges = np.diff(np.r_[0, flags.astype(np.int8), 0])
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max()) if len(starts) else 0


def withheld_hours(location) -> pd.Series:
    """Per hour of WINDOW: would predict, issuing from this hour, withhold the location?

    The path predict takes (pipeline/steps/forecasting.py): validated rows, the features of
    the default spec (those with any value, as training keeps them), their completeness, the
    hours since the target was last observed, and the one rule of
    ``pipeline.core.quality.input_problems``.
    """
    source = SyntheticSource(PARAMS.source.synthetic)
    spec = FeatureSpec(tuple(PARAMS.targets), tuple(PARAMS.horizons),
                       FeatureSettings.of(PARAMS.features))
    warmup = pd.Timedelta(hours=spec.warmup_hours + 48)
    rows = source.fetch([location], WINDOW[0] - warmup, WINDOW[1]).frame
    runs = source.fetch_forecasts([location], WINDOW[0] - warmup - pd.Timedelta(hours=48),
                                  WINDOW[1]).frame
    valid = validate(rows, known_locations=PARAMS.location_ids).valid
    forecasts = validate_forecasts(runs, known_locations=PARAMS.location_ids).valid
    features = build_features(valid, spec, {location.id: location.timezone},
                              location_codes(PARAMS.location_ids), with_labels=False,
                              forecasts=forecasts)
    names = [n for n in feature_names(spec) if features[n].notna().any()]
    completeness = features_present(features[names].to_numpy(dtype=np.float64))
    grid = regular_grid(valid).set_index("time").reindex(pd.DatetimeIndex(features["time"]))
    positions = np.arange(len(grid))
    since = {t: hours_since_observed(grid[t].to_numpy(dtype=np.float64), positions)
             for t in PARAMS.targets}
    withheld = [
        bool(input_problems(completeness[i], {t: np.nan_to_num(since[t][i], nan=np.inf)
                                              for t in PARAMS.targets},
                            "", LIMITS.min_input_completeness,
                            LIMITS.max_hours_since_observation))
        for i in positions
    ]
    out = pd.Series(withheld, index=pd.DatetimeIndex(features["time"]))
    return out[(out.index >= WINDOW[0]) & (out.index < WINDOW[1])]


def test_for_is_longer_than_any_single_synthetic_outage_withholds():
    """Station outages last 1..2 x mean - 1 h and blank every feature; a target sensor's
    outage withholds all but the first max_hours_since_observation hours of it."""
    longest_station = 2 * STATION_GAP_MEAN_H - 1
    longest_sensor = 2 * SENSOR_GAP_MEAN_H - 1 - LIMITS.max_hours_since_observation
    assert for_hours("ForecastWithheld") > max(longest_station, longest_sensor)


@pytest.mark.parametrize("location", PARAMS.locations, ids=lambda loc: loc.id)
def test_no_withholding_of_the_default_source_lasts_as_long_as_for(location):
    """Over the `make run` year and this year, with the real generator, features and limits:
    outages withhold every location at times (the alert has something to wait out), never
    for as long as `for:`."""
    withheld = withheld_hours(location)
    assert len(withheld) == (WINDOW[1] - WINDOW[0]) / pd.Timedelta(hours=1)
    longest = longest_run(withheld.to_numpy())
    assert longest > LIMITS.max_hours_since_observation, "no outage withheld the location"
    assert longest < for_hours("ForecastWithheld"), (
        f"{location.id}: withheld for {longest} h in a row, ForecastWithheld waits "
        f"{for_hours('ForecastWithheld')} h")


@pytest.mark.stack
def test_a_withheld_location_is_pending_in_the_real_prometheus_until_forecast_again(tmp_path):
    """The gauge as predict pushes it (catalogue labels, pushadd, honor_labels scrape) meets
    the committed rule: delhi's ForecastWithheld is pending, berlin has none; once delhi is
    forecast again it is gone (the fast stack evaluates every second; `for:` is unchanged)."""
    job = "aq_withheld_test"
    with running_stack(tmp_path) as stack:
        reporter = MetricsReporter(Settings(pushgateway_url=stack.pushgateway, metrics_job=job))

        def push(degraded: dict[str, int]) -> None:
            with reporter.step("predict") as run:
                for location, value in degraded.items():
                    run.set("aq_forecast_degraded", value, location=location)

        def withheld_alerts() -> list[dict]:
            return [r["metric"] for r in prom_query(
                stack.prometheus, f'ALERTS{{alertname="ForecastWithheld",job="{job}"}}')]

        push({"delhi": 1, "berlin": 0})
        pending = wait_until(withheld_alerts, timeout=60, what="ForecastWithheld for delhi")
        assert pending == [{"__name__": "ALERTS", "alertname": "ForecastWithheld",
                            "alertstate": "pending", "job": job, "step": "predict",
                            "location": "delhi", "severity": "warning",
                            "category": "pipeline"}]

        push({"delhi": 0, "berlin": 0})
        wait_until(lambda: not withheld_alerts(), timeout=60,
                   what="ForecastWithheld to end once delhi is forecast again")
