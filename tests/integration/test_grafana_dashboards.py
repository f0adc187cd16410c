"""The pipeline's dashboards against the Prometheus of a real pipeline run (Grafana's part done
by tests/grafana_doc.py: variables expanded to each value, queries as the panels run them).

The observed run (tests/integration/conftest.py) ingests, trains, promotes, trains again,
rolls back and rolls forward, forecasts, scores and measures drift, then serves its champion
under gunicorn with a short load test: every panel of pipeline health, model quality,
forecasts, drift and serving must show data, or declare why not. The Airflow
dashboard is checked against a real Airflow in tests/dags/test_airflow_scheduler.py.
"""

from __future__ import annotations

import json
import urllib.request
from functools import cache

import pandas as pd
import pytest

from grafana import generate
from pipeline.io.storage import read_raw
from tests.grafana_doc import (
    Prometheus,
    check_annotation,
    check_panel,
    panels,
    variable_values,
    variables,
)
from tests.integration.conftest import JOB
from tests.monitoring import wait_until

pytestmark = [pytest.mark.stack, pytest.mark.slow]
PIPELINE_DASHBOARDS = ("aq-pipeline-health", "aq-model-quality", "aq-forecasts", "aq-drift")
CHECKED_HERE = (*PIPELINE_DASHBOARDS, "aq-serving")  # the run serves its champion too
STEPS = {"ingest", "preprocess", "train", "evaluate", "promote", "predict", "score", "drift",
         "rollback"}


@cache
def generated() -> tuple[dict[str, dict], list]:
    dashes, metas = generate.build()
    return {d["uid"]: d for d in dashes.values()}, metas


def panel_metas():
    return [m for m in generated()[1] if m.dashboard in CHECKED_HERE]


@pytest.fixture(scope="module")
def prom(observed_run) -> Prometheus:
    return Prometheus(observed_run.stack.prometheus, observed_run.started)


@pytest.fixture(scope="module")
def present(prom) -> set[str]:
    return prom.names()


def test_every_pipeline_dashboard_is_checked_here():
    """The generated dashboards with queries are checked live, here or with Airflow."""
    with_queries = {m.dashboard for m in generated()[1]}
    assert with_queries == {*CHECKED_HERE, "aq-airflow"}


@pytest.mark.parametrize("meta", panel_metas(),
                         ids=[f"{m.dashboard.removeprefix('aq-')}:{m.title}"
                              for m in panel_metas()])
def test_panel_queries_return_data_for_every_variable_value(meta, prom, present):
    dashboard = generated()[0][meta.dashboard]
    assert check_panel(meta, dashboard, prom, present) == []


def test_variables_list_what_the_run_produced(observed_run, prom):
    project = observed_run.project
    expected = {
        "location": sorted(json.loads(
            (project / "reports" / "forecast.json").read_text())["max_aqi_24h"])}
    values = {}
    for uid in PIPELINE_DASHBOARDS:
        for name, variable in variables(generated()[0][uid]).items():
            if variable["type"] == "query":
                values[(uid, name)] = variable_values(prom.url, variable)
    locations = sorted(key.split("/")[0] for key in expected["location"])
    assert values[("aq-forecasts", "location")] == locations
    assert values[("aq-pipeline-health", "location")] == locations
    assert set(values[("aq-pipeline-health", "step")]) >= STEPS
    assert values[("aq-model-quality", "target")] == ["pm2_5"]
    assert values[("aq-model-quality", "horizon")] == ["1", "6", "12", "24"]  # numeric order
    assert values[("aq-forecasts", "horizon")] == ["1", "6", "12", "24"]
    assert len(values[("aq-drift", "feature")]) > 20


def test_annotations_mark_the_failure_the_promotions_the_rollback_and_the_refusal(prom):
    checked = set()
    for uid in PIPELINE_DASHBOARDS:
        dashboard = generated()[0][uid]
        for annotation in dashboard["annotations"]["list"]:
            if "expr" in annotation:
                assert check_annotation(annotation, dashboard, prom) == []
                checked.add(annotation["name"])
    assert checked == {"Failed steps", "Promotions", "Rollbacks", "Refused promotions"}
    # the failure marked is the run's early predict, not any step
    failed = prom.range("aq_step_success == bool 0", step="1s")
    marked = {s["metric"]["step"] for s in failed if any(v == "1" for _, v in s["values"])}
    assert "predict" in marked


def test_pages_the_dashboards_link_to_open(observed_run, prom):
    """Prometheus' alerts page, and every runbook section a panel links to, on the stack's
    runbook page (the webhook receiver serves it; the dashboards carry the default port)."""
    for page in ("/classic/alerts",):
        with urllib.request.urlopen(prom.url + page, timeout=10) as reply:  # noqa: S310
            assert reply.status == 200
    linked = {link["url"].partition("#")[2] for dash in generated()[0].values()
              for p in panels(dash) for link in p.get("links", [])
              if link["url"].startswith("${runbook_url}#")}
    with urllib.request.urlopen(observed_run.stack.info["AQ_RUNBOOK_URL"],  # noqa: S310
                                timeout=10) as reply:
        page = reply.read().decode()
    assert len(linked) >= 12
    assert {anchor for anchor in linked if f' id="{anchor}"' not in page} == set()


# ---------------------------------------------------------------- what the new gauges hold


def by_labels(result: list[dict], *labels: str) -> dict[tuple, float]:
    return {tuple(r["metric"][k] for k in labels): float(r["value"][1]) for r in result}


def test_forecast_gauges_are_the_last_batch_on_disk(observed_run):
    latest = pd.read_parquet(observed_run.project / "predictions" / "latest.parquet")
    expected = {(r.location_id, r.target, str(r.horizon)): pytest.approx(r.value)
                for r in latest.itertuples()}
    issued = {(loc,): pytest.approx(t.timestamp())
              for loc, t in latest.groupby("location_id")["issue_time"].max().items()}

    def exported():
        got = by_labels(observed_run.query(f'aq_forecast_value{{job="{JOB}"}}'),
                        "location", "target", "horizon")
        return got if got == expected else None

    wait_until(exported, timeout=15, what="aq_forecast_value to equal latest.parquet")
    assert by_labels(observed_run.query("aq_forecast_issue_timestamp_seconds"),
                     "location") == issued


def test_observation_gauges_are_the_newest_stored_values(observed_run):
    raw = read_raw(observed_run.project / "data" / "raw", "synthetic")
    expected, times = {}, {}
    for location, rows in raw.dropna(subset=["pm2_5"]).groupby("location_id"):
        newest = rows.loc[rows["time"].idxmax()]
        expected[(location, "pm2_5")] = pytest.approx(newest["pm2_5"])
        times[(location, "pm2_5")] = pytest.approx(newest["time"].timestamp())

    def exported():
        got = by_labels(observed_run.query(f'aq_observation_value{{job="{JOB}"}}'),
                        "location", "target")
        return got if got == expected else None

    wait_until(exported, timeout=15, what="aq_observation_value to equal the stored data")
    assert by_labels(observed_run.query("aq_observation_timestamp_seconds"),
                     "location", "target") == times


def test_champion_switch_time_is_the_pointers(observed_run):
    pointer = json.loads((observed_run.project / "models" / "champion.json").read_text())
    got = observed_run.query("aq_champion_switched_timestamp_seconds")
    assert [(r["metric"]["action"], float(r["value"][1])) for r in got] == [
        ("promote", pytest.approx(pd.Timestamp(pointer["at"]).timestamp()))]


def test_drift_periods_are_the_champions_training_rows_and_the_recent_window(observed_run):
    pointer = json.loads((observed_run.project / "models" / "champion.json").read_text())
    meta = json.loads((observed_run.project / "models" / "registry" / pointer["version"]
                       / "metadata.json").read_text())
    start = by_labels(observed_run.query("aq_drift_period_start_timestamp_seconds"), "period")
    end = by_labels(observed_run.query("aq_drift_period_end_timestamp_seconds"), "period")
    training = meta["reference_period"]
    assert start[("training",)] == pd.Timestamp(training["start"]).timestamp()
    assert end[("training",)] == pd.Timestamp(training["end"]).timestamp()
    assert end[("training",)] < pd.Timestamp(meta["holdout_start"]).timestamp()
    raw = read_raw(observed_run.project / "data" / "raw", "synthetic")
    assert end[("recent",)] == raw["time"].max().timestamp()
    assert start[("recent",)] < end[("recent",)]
