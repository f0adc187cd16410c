"""Day one after `make run`: the schedule continues where the history stopped, honestly.

A project with `make run`-style history (two months of 2025, a champion trained on it) hands
over to the hourly schedule today, 21 months later. The DAGs run as Airflow runs them
(``dag.test()``, real DVC) and push to a real Pushgateway that a real Prometheus with the
project's rules scrapes:

- the hourly runs from "now" catch up the whole gap (bounded per run), leaving no hole;
- the forecasts that follow are issued for the real upcoming hours, from complete inputs;
- after the day's nightly retraining, no pipeline or model alert is pending or firing;
- with the synthetic source's emission_shift scenario over the last weeks, DriftDetected fires.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.dags.conftest import make_dvc_project, seed_history
from tests.monitoring import prom_query, running_stack, wait_until

pytestmark = [pytest.mark.airflow, pytest.mark.stack, pytest.mark.slow]

NOW = pd.Timestamp.now(tz="UTC").floor("h")
HOUR = pd.Timedelta(hours=1)
LOCATIONS = ("berlin", "delhi")
SHIFT = {"kind": "emission_shift", "start": f"{NOW - pd.Timedelta(days=20):%Y-%m-%d}",
         "variable": "pm2_5", "factor": 2.5}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("day-one-stack")
    with running_stack(root) as running:
        yield running


@pytest.fixture(scope="module")
def dags(airflow_db, monkeypatch_module):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch_module.setenv("AQ_TASK_RETRIES", "0")  # read when the DAGs are parsed

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag


def day_one(root: Path, dags, stack, job: str, monkeypatch) -> None:
    """`make run`'s history and champion, then one day of the schedule from now."""
    monkeypatch.setenv("AQ_PROJECT_DIR", str(root))
    monkeypatch.setenv("AQ_PUSHGATEWAY_URL", stack.pushgateway)
    monkeypatch.setenv("AQ_METRICS_JOB", job)
    assert dags.get_dag("aq_retrain").test().state == "success"  # make run's dvc repro
    # the schedule takes over: two hourly runs close a 21-month gap (366 days per run)
    for logical in (NOW - HOUR, NOW):
        assert dags.get_dag("aq_ingest").test(logical_date=logical.to_pydatetime()).state \
            == "success"
    assert dags.get_dag("aq_predict").test().state == "success"
    assert dags.get_dag("aq_retrain").test().state == "success"  # the nightly retraining
    assert dags.get_dag("aq_predict").test().state == "success"


def alerts(stack, job: str) -> list[dict]:
    return prom_query(stack.prometheus, f'ALERTS{{job="{job}"}}')


@pytest.fixture
def history(tmp_path):
    def make(name: str, scenarios: list | None = None) -> Path:
        root = make_dvc_project(tmp_path / name, {
            "horizons": [1, 6],
            "source": {"kind": "synthetic", "start": "2025-01-01", "end": "2025-03-01",
                       # no impossible sensor values: every hour is stored, none quarantined
                       "synthetic": {"spike_rate": 0.0, "scenarios": scenarios or []}},
        })
        seed_history(root)
        return root

    return make


def test_the_schedule_continues_where_make_run_stopped_and_nothing_fires(
        history, dags, stack, monkeypatch):
    root = history("plain")
    job = "aq_day_one"
    day_one(root, dags, stack, job, monkeypatch)

    # no hole between the history and now
    stored = pd.read_parquet(root / "data/raw/source=synthetic")
    for location in LOCATIONS:
        hours = pd.DatetimeIndex(stored.loc[stored["location_id"] == location, "time"])
        expected = pd.date_range(pd.Timestamp("2025-01-01", tz="UTC"), NOW, freq="h",
                                 inclusive="left")
        assert expected.difference(hours).empty, location
    # forecasts for the real upcoming hours, from complete inputs
    latest = pd.read_parquet(root / "predictions/latest.parquet")
    # every location is forecast, unless the synthetic sensor of its target really has a gap
    # in the hours before the issue time (the generator's outages follow the wall clock):
    # then it is withheld, never forecast from stale inputs
    forecast = set(latest["location_id"])
    assert forecast, "no location forecast at all"
    withheld = set(LOCATIONS) - forecast
    for location in withheld:
        # withheld for a stale target (no PM2.5 in the hours before the issue time) or for
        # too few features (an outage of its station inside the features' 48 h look-back)
        rows = stored[(stored["location_id"] == location)
                      & (stored["time"] >= NOW - 48 * HOUR) & (stored["time"] < NOW)]
        stale = rows.loc[rows["time"] >= NOW - 4 * HOUR, "pm2_5"].isna().all()
        outage = rows.drop(columns=["location_id", "time"]).isna().any(axis=None)
        assert stale or outage, f"{location} withheld without a gap in its stored data"
    assert (latest["issue_time"] == NOW - HOUR).all()
    assert (latest["target_time"] > NOW - HOUR).all()
    assert (latest["input_completeness"] >= 0.8).all()
    assert (latest["hours_since_observation"] <= 3).all()

    # Prometheus has scraped the day's pushes and evaluated the rules a few times
    wait_until(lambda: prom_query(stack.prometheus,
                                  f'aq_step_success{{job="{job}",step="drift"}}'), 60,
               what="the day's metrics in Prometheus")
    wait_until(lambda: prom_query(stack.prometheus,
                                  f'aq_drift_detected{{job="{job}"}} == 0'), 30,
               what="drift evaluated as not detected")
    import time

    time.sleep(5)  # several evaluation rounds (1 s in the fast stack)
    operational = [a["metric"] for a in alerts(stack, job)
                   if a["metric"].get("category") in ("pipeline", "model")]
    # a location withheld by a real outage (checked above) has ForecastWithheld pending, as
    # it should; it fires only after longer than any synthetic outage withholds
    # (tests/prometheus/test_forecast_withheld.py)
    pending_withheld = {a["location"] for a in operational
                        if a["alertname"] == "ForecastWithheld" and a["alertstate"] == "pending"}
    assert pending_withheld == withheld, operational
    assert [a for a in operational if a["alertname"] != "ForecastWithheld"] == [], operational


def test_the_emission_shift_scenario_fires_drift_detected(history, dags, stack, monkeypatch):
    root = history("shifted", [SHIFT])
    job = "aq_day_one_shift"
    day_one(root, dags, stack, job, monkeypatch)

    firing = wait_until(
        lambda: [a for a in alerts(stack, job)
                 if a["metric"]["alertname"] == "DriftDetected"
                 and a["metric"]["alertstate"] == "firing"], 60,
        what="DriftDetected to fire")
    assert firing
    assert os.path.exists(root / "reports" / "drift.json")
