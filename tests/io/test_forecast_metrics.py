"""The forecast and observation gauges the forecasts dashboard draws (bounded, never a guess)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.context import Context
from pipeline.io.forecast_metrics import (
    export_forecasts,
    export_observations,
    latest_observations,
)
from pipeline.io.metrics import CATALOGUE, StepRun
from pipeline.io.storage import write_raw
from pipeline.settings import Settings
from pipeline.steps import ingest
from tests.conftest import make_project

ISSUED = pd.Timestamp("2025-02-10T12:00", tz="UTC")


def forecasts(**extra) -> pd.DataFrame:
    frame = pd.DataFrame({
        "location_id": ["berlin", "berlin", "delhi", "delhi"],
        "issue_time": [ISSUED, ISSUED, ISSUED - pd.Timedelta(hours=2),
                       ISSUED - pd.Timedelta(hours=2)],
        "target": "pm2_5",
        "horizon": [1, 24, 1, 24],
        "value": [12.5, 20.0, np.nan, 180.0],
    })
    return frame.assign(**extra)


def samples(run: StepRun, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value
            for family in run.registry.collect() for s in family.samples if s.name == name}


def test_forecast_values_per_location_target_horizon_and_no_gap_filled():
    run = StepRun("predict")
    export_forecasts(run, forecasts())
    values = samples(run, "aq_forecast_value")
    assert values == {
        (("horizon", "1"), ("location", "berlin"), ("target", "pm2_5")): 12.5,
        (("horizon", "24"), ("location", "berlin"), ("target", "pm2_5")): 20.0,
        (("horizon", "24"), ("location", "delhi"), ("target", "pm2_5")): 180.0,
    }  # delhi's NaN at 1 h is a gap, not a zero
    issued = samples(run, "aq_forecast_issue_timestamp_seconds")
    assert issued == {(("location", "berlin"),): ISSUED.timestamp(),
                      (("location", "delhi"),): (ISSUED - pd.Timedelta(hours=2)).timestamp()}
    assert samples(run, "aq_forecast_lower") == {}  # no interval columns: no bounds


def test_interval_bounds_are_exported_when_the_model_gives_them():
    run = StepRun("predict")
    export_forecasts(run, forecasts(lower=[10.0, np.nan, np.nan, 150.0],
                                    upper=[15.0, np.nan, np.nan, 210.0]))
    assert samples(run, "aq_forecast_lower") == {
        (("horizon", "1"), ("location", "berlin"), ("target", "pm2_5")): 10.0,
        (("horizon", "24"), ("location", "delhi"), ("target", "pm2_5")): 150.0,
    }
    assert set(samples(run, "aq_forecast_upper")) == set(samples(run, "aq_forecast_lower"))


def hourly(location: str, start: str, hours: int, pm2_5) -> pd.DataFrame:
    return pd.DataFrame({
        "location_id": location,
        "time": pd.date_range(start, periods=hours, freq="h", tz="UTC"),
        "pm2_5": pm2_5,
        "no2": 30.0,
    })


def test_latest_observation_is_the_newest_non_null_value_of_the_latest_partition(tmp_path):
    raw = tmp_path / "raw"
    write_raw(raw, "synthetic", hourly("berlin", "2025-01-31T20:00", 6, [1, 2, 3, 4, 5, 6]))
    # the newest hour has no pm2_5 (a sensor gap): the hour before is the latest observation
    write_raw(raw, "synthetic", hourly("berlin", "2025-02-01T02:00", 3, [7.0, 8.0, np.nan]))
    write_raw(raw, "synthetic", hourly("delhi", "2025-02-01T00:00", 2, [np.nan, np.nan]))
    latest = latest_observations(raw, "synthetic", ["berlin", "delhi", "madrid"],
                                 ["pm2_5", "no2"])
    by_key = {(r.location_id, r.target): (r.time, r.value) for r in latest.itertuples()}
    assert by_key == {
        ("berlin", "pm2_5"): (pd.Timestamp("2025-02-01T03:00", tz="UTC"), 8.0),
        ("berlin", "no2"): (pd.Timestamp("2025-02-01T04:00", tz="UTC"), 30.0),
        ("delhi", "no2"): (pd.Timestamp("2025-02-01T01:00", tz="UTC"), 30.0),
    }  # delhi has no pm2_5 in its latest month and madrid no data: no value is made up

    run = StepRun("ingest")
    export_observations(run, latest)
    assert samples(run, "aq_observation_value")[
        (("location", "berlin"), ("target", "pm2_5"))] == 8.0
    assert samples(run, "aq_observation_timestamp_seconds")[
        (("location", "berlin"), ("target", "pm2_5"))] == pd.Timestamp(
        "2025-02-01T03:00", tz="UTC").timestamp()


def test_ingesting_one_location_still_sends_every_locations_observation(tmp_path, monkeypatch):
    """pushadd replaces a whole family: a one-location run must not drop the others."""
    root = make_project(tmp_path / "project",
                        {"source": {"kind": "synthetic", "start": "2025-01-01",
                                    "end": "2025-01-03"}})
    ctx = Context.load(root, settings=Settings())
    ingest.run(ctx)
    pushed = []
    monkeypatch.setattr(type(ctx.reporter), "push", lambda self, run: pushed.append(run))
    ingest.run(ctx, start="2025-01-03", end="2025-01-04", locations="berlin")
    observed = samples(pushed[-1], "aq_observation_value")
    assert {dict(k)["location"] for k in observed} == set(ctx.params.location_ids)
    times = samples(pushed[-1], "aq_observation_timestamp_seconds")
    newest = {dict(k)["location"]: v for k, v in times.items()}
    assert newest["berlin"] > newest["delhi"]  # berlin got a newer day, delhi kept its own


def test_the_new_gauges_are_catalogued_with_bounded_labels():
    for name in ("aq_forecast_value", "aq_forecast_lower", "aq_forecast_upper"):
        assert CATALOGUE[name].labels == ("location", "target", "horizon")
    assert CATALOGUE["aq_observation_value"].labels == ("location", "target")
    assert CATALOGUE["aq_forecast_lower"].optional  # until models give intervals
    assert not CATALOGUE["aq_forecast_value"].optional
