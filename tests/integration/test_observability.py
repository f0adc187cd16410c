"""End to end with the real binaries: the pipeline's trace in Prometheus, alerts to a receiver.

Shares one observed run (tests/integration/conftest.py): a temporary project, every step
through the CLI with AQ_PUSHGATEWAY_URL set, the real Pushgateway, Prometheus, Alertmanager,
node exporter and the webhook receiver on free ports of 127.0.0.1.
"""

from __future__ import annotations

import time

import pytest

from pipeline.io.metrics import CATALOGUE
from stack import monitoring
from stack.webhook import iter_alerts
from tests.conftest import REPO
from tests.integration.conftest import JOB, RERUN
from tests.metrics_doc import PIPELINE_SECTION, documented_metrics
from tests.monitoring import gateway_samples, wait_until

pytestmark = [pytest.mark.stack, pytest.mark.slow]
STEPS = ("ingest", "preprocess", "train", "evaluate", "backtest", "promote", "predict", "score",
         "drift")


def test_every_step_left_its_trace(observed_run):
    ok = {r["metric"]["step"]: r["value"][1]
          for r in observed_run.query(f'aq_step_success{{job="{JOB}"}}')}
    for step in STEPS:
        assert ok.get(step) == "1", f"{step}: {ok.get(step)}"
    ages = observed_run.query(f'aq:step_seconds_since_success{{job="{JOB}"}}')
    assert {r["metric"]["step"] for r in ages} >= set(STEPS)
    assert all(0 <= float(r["value"][1]) < 3600 for r in ages)


def test_every_documented_metric_exists_with_its_documented_labels(observed_run):
    missing, wrong = [], []
    for name, doc in documented_metrics().items():
        selector = f'{name}{{job="{JOB}"}}' if doc.section == PIPELINE_SECTION else name
        series = observed_run.query(selector)
        if not series:
            if not (name in CATALOGUE and CATALOGUE[name].optional):
                missing.append(name)
            continue
        for s in series:
            labels = set(s["metric"]) - {"__name__"}
            if doc.section == PIPELINE_SECTION and labels != set(doc.labels):
                wrong.append((name, sorted(labels), doc.labels))
            elif not set(doc.labels) <= labels:
                wrong.append((name, sorted(labels), doc.labels))
    assert missing == [], "documented metrics absent from Prometheus"
    assert wrong == [], "series whose labels differ from docs/metrics.md"


def test_values_are_those_of_the_run(observed_run):
    """Spot checks against what the steps wrote to disk, not just that something exists."""
    import json

    reports = observed_run.project / "reports"
    evaluation = json.loads((reports / "evaluation.json").read_text())
    for target, by_h in evaluation["scores"].items():
        for h, s in by_h.items():
            got = observed_run.query(f'aq_model_mae{{target="{target}",horizon="{h}"}}')
            assert float(got[0]["value"][1]) == pytest.approx(s["mae"])
    backtest = json.loads((reports / "backtest" / "metrics.json").read_text())
    for target, by_h in backtest["scores"].items():
        for h, s in by_h.items():
            got = observed_run.query(
                f'aq_backtest_interval_coverage{{target="{target}",horizon="{h}"}}')
            assert float(got[0]["value"][1]) == pytest.approx(s["coverage"], abs=1e-4)
    forecast = json.loads((reports / "forecast.json").read_text())
    for key, value in forecast["max_aqi_24h"].items():
        location, target = key.split("/")
        got = observed_run.query(
            f'aq_forecast_max_aqi_24h{{location="{location}",target="{target}"}}')
        assert float(got[0]["value"][1]) == pytest.approx(value)
    promotion = json.loads((reports / "promotion.json").read_text())
    info = observed_run.query("aq_champion_info")
    assert [r["metric"]["version"] for r in info] == [promotion["champion"]]
    providers = {r["metric"]["provider"] for r in observed_run.query("aq_ingest_requests")}
    assert "open_meteo_air_quality" in providers


def test_series_count_stays_bounded_across_runs(observed_run):
    """Another round of the hourly steps adds no series, in the Pushgateway or in Prometheus."""
    # the pushed series (not ALERTS or recording rules, which come and go with evaluations)
    in_prometheus = f'count({{job="{JOB}",__name__=~"aq_.+|push_.+"}})'

    def gateway_series() -> set[tuple]:
        return {(s.name, tuple(sorted(s.labels.items())))
                for s in gateway_samples(observed_run.stack.pushgateway, JOB)}

    before = gateway_series()
    prom_before = float(observed_run.query(in_prometheus)[0]["value"][1])
    for name in ("ingest", "predict", "score", "drift"):
        args = RERUN if name == "ingest" else ()
        observed_run.step(name, *args)
    assert gateway_series() == before
    time.sleep(3)  # a few scrapes and evaluations of the new pushes
    assert float(observed_run.query(in_prometheus)[0]["value"][1]) == prom_before


def test_a_failing_step_fires_its_alert_through_alertmanager_to_the_receiver(observed_run):
    candidate = observed_run.project / "build" / "candidate"
    hidden = candidate.with_name("candidate.hidden")
    candidate.rename(hidden)  # as if train had not run
    try:
        proc = observed_run.step("evaluate", check=False)
    finally:
        hidden.rename(candidate)
    assert proc.returncode == 1
    assert "run `python -m pipeline train` first" in proc.stderr

    failed = observed_run.wait_for(f'aq_step_success{{job="{JOB}",step="evaluate"}} == 0')
    assert len(failed) == 1
    observed_run.wait_for(
        'ALERTS{alertname="PipelineStepFailing",step="evaluate",alertstate="firing"}')
    log = observed_run.stack.alerts_log

    def delivered(status: str):
        return [(path, a) for path, a in iter_alerts(log)
                if a["labels"].get("alertname") == "PipelineStepFailing"
                and a["labels"].get("step") == "evaluate" and a["status"] == status]

    path, alert = wait_until(lambda: delivered("firing"), timeout=30,
                             what="the webhook receiver to get PipelineStepFailing")[0]
    assert path == "/critical"  # routed by severity
    assert alert["labels"]["severity"] == "critical"
    # the runbook link is absolute and opens on its section in a real browser
    url = alert["annotations"]["runbook_url"]
    assert url == f"{observed_run.stack.info['AQ_RUNBOOK_URL']}#pipelinestepfailing"
    heading = open_in_browser(url, "#pipelinestepfailing")
    assert heading["text"] == "PipelineStepFailing"
    assert heading["in_view"]

    # fixed and re-run: the metric recovers, the last failure is kept, the alert resolves
    observed_run.step("evaluate")
    observed_run.wait_for(f'aq_step_success{{job="{JOB}",step="evaluate"}} == 1')
    assert observed_run.query(
        f'aq_step_last_failure_timestamp_seconds{{job="{JOB}",step="evaluate"}}')
    wait_until(lambda: delivered("resolved"), timeout=60,
               what="the webhook receiver to get the resolution")


def open_in_browser(url: str, selector: str) -> dict:
    """Open ``url`` in Debian's Chromium (Playwright, nothing downloaded); the element's text
    and whether the page scrolled it into view."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(url, timeout=30_000)
            element = page.locator(selector)
            return {"text": element.inner_text(timeout=10_000),
                    "in_view": element.evaluate(
                        "e => { const r = e.getBoundingClientRect();"
                        " return r.top >= 0 && r.top < window.innerHeight; }")}
        finally:
            browser.close()


def test_unhealthy_forecasts_and_only_those_reach_the_air_quality_receiver(observed_run):
    """The domain alert follows the forecast: AQI > 150 <=> notified on /air-quality."""
    forecast = {r["metric"]["location"]: float(r["value"][1])
                for r in observed_run.query(f'aq_forecast_max_aqi_24h{{job="{JOB}"}}')}
    unhealthy = {loc for loc, value in forecast.items() if value > 150}
    firing = wait_until(
        lambda: {r["metric"]["location"] for r in observed_run.query(
            'ALERTS{alertname="ForecastAQIUnhealthy",alertstate="firing"}')} == unhealthy,
        timeout=20, what=f"ForecastAQIUnhealthy to fire for exactly {sorted(unhealthy)}")
    assert firing
    assert "delhi" in unhealthy  # the run's emission scenario (conftest) makes sure of it

    def notified():
        """Locations whose latest air-quality notification says firing (earlier runs' resolve)."""
        latest = {}
        for path, a in iter_alerts(observed_run.stack.alerts_log):
            if a["labels"]["alertname"] == "ForecastAQIUnhealthy" and path == "/air-quality":
                latest[a["labels"]["location"]] = a["status"]
        return {loc for loc, status in latest.items() if status == "firing"}

    assert wait_until(lambda: notified() == unhealthy, timeout=45,
                      what="the air-quality receiver to be notified")
    others = {path for path, a in iter_alerts(observed_run.stack.alerts_log)
              if a["labels"]["alertname"] == "ForecastAQIUnhealthy"}
    assert others <= {"/air-quality"}  # never on the operational receivers


def test_pipeline_succeeds_with_the_pushgateway_stopped(observed_run):
    st = observed_run.stack
    st.supervisor.stop("pushgateway")
    try:
        started = time.monotonic()
        proc = observed_run.step("predict")
        elapsed = time.monotonic() - started
        assert proc.returncode == 0
        assert "could not push metrics of step predict" in proc.stderr
        assert elapsed < 60
        observed_run.wait_for('up{job="pushgateway"} == 0')
    finally:
        monitoring.start(st.paths, st.ports, fast=True, configs=REPO / "prometheus")
    observed_run.wait_for('up{job="pushgateway"} == 1')


def test_serving_is_scraped_up_and_no_serving_alert_fires(observed_run):
    """The forecast API is a live target serving the champion; its alerts stay quiet."""
    up = observed_run.query('up{job="serving"}')
    assert [r["value"][1] for r in up] == ["1"]
    import json

    pointer = json.loads((observed_run.project / "models" / "champion.json").read_text())
    served = {r["metric"]["version"]
              for r in observed_run.query("aq_serving_model_info == 1")}
    assert served == {pointer["version"]}
    assert observed_run.query('ALERTS{category="serving"}') == []
    assert observed_run.query('ALERTS{alertname="TargetDown",job="serving"}') == []
    requests = float(observed_run.query("sum(aq:serving_requests:rate5m)")[0]["value"][1])
    assert requests > 0
    errors = observed_run.query("aq:serving_errors:ratio_rate5m")
    assert [float(r["value"][1]) for r in errors] == [0.0]
