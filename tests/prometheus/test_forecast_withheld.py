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
from pipeline.schema import VALUE_COLUMNS
from pipeline.settings import Settings
from tests.conftest import REPO
from tests.monitoring import prom_query, running_stack, wait_until

PARAMS = load_params(REPO / "params.yaml")
LIMITS = PARAMS.forecast
# the `make run` year (source.start/end) and the year the schedule runs in now
WINDOW = (pd.Timestamp("2025-01-01", tz="UTC"), pd.Timestamp("2027-01-01", tz="UTC"))


def for_hours(alert: str) -> float:
    """The rule's `for:` in hours (Prometheus durations such as 48h, 1d12h, 90m)."""
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


def withheld_hours(location, window: tuple[pd.Timestamp, pd.Timestamp],
                   station_outage: tuple[pd.Timestamp, int] | None = None) -> pd.Series:
    """Per hour of ``window``: would predict, issuing from this hour, withhold the location?

    The path predict takes (pipeline/steps/forecasting.py): validated rows, the features of
    the default spec (those with any value, as training keeps them), their completeness, the
    hours since the target was last observed, and the one rule of
    ``pipeline.core.quality.input_problems``. ``station_outage`` (start, hours) blanks every
    variable for that long, as the generator's whole-station outages do.
    """
    source = SyntheticSource(PARAMS.source.synthetic)
    spec = FeatureSpec(tuple(PARAMS.targets), tuple(PARAMS.horizons),
                       FeatureSettings.of(PARAMS.features))
    warmup = pd.Timedelta(hours=spec.warmup_hours + 48)
    rows = source.fetch([location], window[0] - warmup, window[1]).frame
    if station_outage is not None:
        first, hours = station_outage
        out = (rows["time"] >= first) & (rows["time"] < first + pd.Timedelta(hours=hours))
        rows.loc[out, list(VALUE_COLUMNS)] = np.nan
    runs = source.fetch_forecasts([location], window[0] - warmup - pd.Timedelta(hours=48),
                                  window[1]).frame
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
    return out[(out.index >= window[0]) & (out.index < window[1])]


def run_through(withheld: pd.Series, hour: pd.Timestamp) -> int:
    """Length of the run of withheld hours that contains ``hour``."""
    flags = withheld.to_numpy()
    at = withheld.index.get_loc(hour)
    if not flags[at]:
        return 0
    first = at
    while first > 0 and flags[first - 1]:
        first -= 1
    last = at
    while last + 1 < len(flags) and flags[last + 1]:
        last += 1
    return last - first + 1


# Outages are runs of 1 .. 2 x mean - 1 hours (pipeline/core/synthetic.py); two overlapping
# whole-station outages leave at most twice the longest without any data.
LONGEST_STATION_OUTAGE_H = 2 * STATION_GAP_MEAN_H - 1
LONGEST_SENSOR_OUTAGE_H = 2 * SENSOR_GAP_MEAN_H - 1


def complete(location, start: pd.Timestamp, end: pd.Timestamp) -> bool:
    """Every variable of every hour in [start, end) is there and valid (no natural outage)."""
    rows = SyntheticSource(PARAMS.source.synthetic).fetch([location], start, end).frame
    valid = validate(rows, known_locations=PARAMS.location_ids).valid
    hours = (end - start) / pd.Timedelta(hours=1)
    return len(valid) == hours and bool(valid[list(VALUE_COLUMNS)].notna().all().all())


@pytest.mark.slow  # simulates and featurises weeks of every location's data: ~1.5 s CPU each
@pytest.mark.parametrize("location", PARAMS.locations, ids=lambda loc: loc.id)
@pytest.mark.parametrize("outages", [1, 2])
def test_for_is_longer_than_one_or_two_overlapping_station_outages_withhold(location, outages):
    """The longest data gap one station outage (23 h) or two overlapping ones (46 h) leave,
    put into the default source's data at other hours of day and seasons, where no natural
    outage joins it: the location is withheld through the gap and a few hours after it (the
    features that look back into it are missing), never as long as `for:`. A target sensor's
    outage withholds less. (A third outage joining two long ones can withhold longer: rare,
    see the comment next to the rule.)"""
    gap = outages * LONGEST_STATION_OUTAGE_H
    assert LONGEST_SENSOR_OUTAGE_H - LIMITS.max_hours_since_observation < gap
    margin = pd.Timedelta(hours=12)
    candidates = pd.date_range("2025-02-01 05:00", periods=48, freq="331h", tz="UTC")
    placements = [first for first in candidates if complete(
        location, first - margin, first + pd.Timedelta(hours=gap) + margin)][:3]
    assert len(placements) == 3, f"{location.id}: too few hours without natural outages"
    for first in placements:
        window = (first - pd.Timedelta(days=3), first + pd.Timedelta(days=5))
        withheld = withheld_hours(location, window, (first, gap))
        longest = run_through(withheld, first + pd.Timedelta(hours=gap - 1))
        assert gap - LIMITS.max_hours_since_observation <= longest, first
        assert longest < for_hours("ForecastWithheld"), (
            f"{location.id}: a {gap} h gap from {first} withholds {longest} h in a row, "
            f"ForecastWithheld waits {for_hours('ForecastWithheld')} h")


@pytest.mark.slow  # two years of each location's data, featurised
@pytest.mark.parametrize("location", PARAMS.locations, ids=lambda loc: loc.id)
def test_no_withholding_of_the_default_source_lasts_as_long_as_for(location):
    """Over the `make run` year and this year, with the real generator, features and limits:
    outages withhold every location at times (the alert has something to wait out), never
    for as long as `for:`."""
    withheld = withheld_hours(location, WINDOW)
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
