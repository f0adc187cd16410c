"""The hand-over after `make run`, on the real scheduler: the seams of the schedule hold.

One project with `make run`-style history (weeks before today, a champion from `dvc repro`
and its forecast pushed), then the local Airflow of `make run` with the real scheduler and
every DAG unpaused, so the scheduler itself starts the latest hourly ingestion (a gap of
twelve days to catch up) and the latest nightly slot of the retraining (three hours late,
as at a real hand-over). A real Prometheus evaluates the committed rules on the pushes.
Then, by hand: a retraining whose candidate the gate refuses, a backtest, and a predict run
with a promotion landing between its batches and its finalisation.

What must hold (issue 20, "Done when"): every DAG run ends green; the first retraining either
waited for the catch-up (its holdout reaches the caught-up hour for every location) or did not
train; the promotion record names the data version and every location's extents; no
air-quality alert fires from a forecast older than the limit; each task log holds the step's
lines, not a wall of third-party warnings; a refused promotion shows in the grid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from pipeline.io.registry import Registry
from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack import airflow_local
from tests.conftest import free_port, write_params
from tests.dags.airflow_harness import AirflowApi, failure_report
from tests.dags.conftest import FAST_PARAMS, make_dvc_project, run, seed_history, wait_until
from tests.grafana_doc import Prometheus

# the module's fixtures (history, dvc repro, Airflow, the hand-over's runs) take most of the time
pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.stack,
              pytest.mark.timeout(5400)]

NOW = pd.Timestamp.now(tz="UTC").floor("h")
DAY = pd.Timedelta(days=1)
HISTORY_END = (NOW - 12 * DAY).floor("D")
LOCATIONS = ("berlin", "delhi")
PARAMS = {
    **FAST_PARAMS,
    "source": {"kind": "synthetic", "start": f"{HISTORY_END - 45 * DAY:%Y-%m-%d}",
               "end": f"{HISTORY_END:%Y-%m-%d}",
               # every hour stored, none refused: extents are exact; Delhi's air is bad
               "synthetic": {"gap_rate": 0.0, "spike_rate": 0.0, "scenarios": [
                   {"kind": "emission_shift", "start": f"{HISTORY_END - 40 * DAY:%Y-%m-%d}",
                    "variable": "pm2_5", "factor": 6.0, "locations": ["delhi"]}]}},
    "evaluation": {"holdout_days": 7},
}
# the nightly slot three hours before now: unpausing starts it late, as a hand-over does
RETRAIN_SCHEDULE = f"0 {(NOW.hour - 3) % 24} * * *"
WAVE_TIMEOUT_S = 1800
# lines in a task log that are not the step's own (nor Airflow's frame around it)
FOREIGN_LIMIT = 3


def step_env(root: Path, pushgateway) -> dict[str, str]:
    return {**os.environ, "AQ_PROJECT_DIR": str(root), "AQ_PUSHGATEWAY_URL": pushgateway.url,
            "DVC_NO_ANALYTICS": "1"}


@pytest.fixture(scope="module")
def handover(tmp_path_factory, pushgateway, monkeypatch_module):
    root = make_dvc_project(tmp_path_factory.mktemp("handover") / "project", PARAMS)
    seed_history(root)
    # make run's `dvc repro`: a champion trained on the history, its forecast pushed
    run(["dvc", "repro", "predict"], cwd=root, env=step_env(root, pushgateway), timeout=900)
    paths = ProjectPaths(root)
    first_champion = Registry(paths).champion_version()
    for name, value in {"AQ_TASK_RETRIES": "0", "AQ_INGEST_BATCH_SIZE": "1",
                        "AQ_RETRAIN_SCHEDULE": RETRAIN_SCHEDULE}.items():
        monkeypatch_module.setenv(name, value)
    monkeypatch_module.delenv("AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE", raising=False)
    ports = Ports(airflow=free_port(), pushgateway=pushgateway.port, prometheus=free_port(),
                  alertmanager=free_port(), webhook=free_port(), node_exporter=free_port(),
                  serving=free_port())
    prom_supervisor, prom = start_prometheus(paths, ports, tmp_path_factory)
    try:
        info = airflow_local.start(paths, ports)
        try:
            api = AirflowApi(info["airflow UI"], info["airflow user"], info["airflow password"])
            api.wait_parsed()
            yield {"root": root, "paths": paths, "api": api, "info": info, "prom": prom,
                   "first_champion": first_champion, "pushgateway": pushgateway,
                   "log": {}}
        finally:
            airflow_local.stop(paths)
    finally:
        prom_supervisor.stop_all()


def start_prometheus(paths: ProjectPaths, ports: Ports, tmp_path_factory):
    from stack import monitoring
    from stack.supervisor import Program, Supervisor

    layout = monitoring.write_configs(paths, ports, fast=True)
    supervisor = Supervisor(tmp_path_factory.mktemp("handover-prometheus"))
    started = time.time()
    supervisor.start(Program("prometheus",
                             monitoring.commands(layout, ports, fast=True)["prometheus"]))
    prom = Prometheus(ports.url("prometheus"), started)
    supervisor.wait_for_http(f"{prom.url}/-/ready", timeout=60, name="prometheus")
    return supervisor, prom


def all_runs(api: AirflowApi, dag_id: str) -> list[dict]:
    return api.call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]


def settled(api: AirflowApi, dag_ids=airflow_local.DAG_IDS) -> bool:
    return all(r["state"] in ("success", "failed")
               for d in dag_ids for r in all_runs(api, d))


# ---------------------------------------------------------------- the hand-over itself


@pytest.fixture(scope="module")
def first_wave(handover):
    """Before the hand-over: the old forecast raises no air-quality alert. Then unpause and
    let the scheduler run the catch-up, the late nightly slot and the forecasts."""
    api, prom, paths = handover["api"], handover["prom"], handover["paths"]
    old_aqi = wait_until(lambda: prom.instant(
        'aq_forecast_max_aqi_24h{job="aq_pipeline",location="delhi"}'), 60,
        what="make run's forecast in Prometheus")
    deadline = time.monotonic() + 60  # ForecastStale pending for make run's forecast
    while not (stale := prom.instant('ALERTS{alertname="ForecastStale",location="delhi"}')) \
            and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(3)  # a few more evaluations (1 s in the fast stack)
    before = {"delhi_aqi": float(old_aqi[0]["value"][1]),
              "aq_alerts": prom.instant('ALERTS{alertname="ForecastAQIUnhealthy"}'),
              "stale": stale}
    unpaused_at = time.time()
    airflow_local.set_paused(paths, False)
    wait_until(lambda: {"aq_ingest", "aq_retrain"} <= {
        d for d in ("aq_ingest", "aq_retrain") if all_runs(api, d)}, 300,
        what="the scheduler to start the hourly and the nightly run")
    wait_until(lambda: all_runs(api, "aq_predict") and settled(api), WAVE_TIMEOUT_S,
               interval=5, what="the hand-over's runs to finish")
    runs = {d: all_runs(api, d) for d in airflow_local.DAG_IDS}
    return {"before": before, "runs": runs, "unpaused_at": unpaused_at,
            "promotion": json.loads(paths.promotion_report.read_text()),
            "forecast": json.loads(paths.forecast_report.read_text())}


def test_the_old_forecast_raises_no_air_quality_alert_but_a_stale_one(first_wave):
    before = first_wave["before"]
    assert before["delhi_aqi"] > 150  # the old rule fired on this forecast
    assert before["aq_alerts"] == []
    assert before["stale"], "no ForecastStale for make run's forecast"
    assert before["stale"][0]["metric"]["category"] == "pipeline"


def test_every_run_of_the_hand_over_ends_green(handover, first_wave):
    runs = [(d, r["dag_run_id"]) for d, rs in first_wave["runs"].items() for r in rs]
    states = {run_id: r["state"] for rs in first_wave["runs"].values() for r in rs
              for run_id in [r["dag_run_id"]]}
    assert set(states.values()) == {"success"}, failure_report(handover["paths"], runs)
    assert [r["run_type"] for r in first_wave["runs"]["aq_retrain"]] == ["scheduled"]
    assert {r["run_type"] for r in first_wave["runs"]["aq_ingest"]} == {"scheduled"}


def test_the_first_retraining_waited_for_the_catch_up(handover, first_wave):
    """Its holdout reaches the caught-up hour for every location, or it did not train."""
    api = handover["api"]
    retrain = first_wave["runs"]["aq_retrain"][0]
    tis = {ti["task_id"]: ti for ti in api.task_instances("aq_retrain", retrain["dag_run_id"])}
    ingest = min(first_wave["runs"]["aq_ingest"], key=lambda r: r["logical_date"])
    caught_up = pd.Timestamp(ingest["data_interval_end"]) - pd.Timedelta(hours=1)
    if tis["settled_store"]["state"] == "skipped":  # gave up waiting: trained on nothing
        assert tis["train"]["state"] == "skipped"
        return
    assert tis["promote"]["state"] in ("success", "skipped")
    candidate = first_wave["promotion"]["candidate"]
    extents = Registry(handover["paths"]).metadata(candidate)["location_extents"]
    assert set(extents) == set(LOCATIONS)
    for loc, e in extents.items():
        assert pd.Timestamp(e["holdout_last_hour"]) >= caught_up, (loc, e, caught_up)
        assert e["holdout_rows"] > 0, loc
    # the late slot waited while the catch-up ran: it trained after the ingestion stored
    assert pd.Timestamp(tis["plan_preprocess_batches"]["start_date"]) >= pd.Timestamp(
        ingest["start_date"])


def test_the_promotion_record_names_the_data_version_and_every_locations_extents(first_wave):
    promotion = first_wave["promotion"]
    assert promotion["data_version"]["raw_content_sha256"]
    assert promotion["data_version"]["dvc_md5"]
    assert set(promotion["location_extents"]) == set(LOCATIONS)
    for e in promotion["location_extents"].values():
        assert {"first_hour", "train_last_hour", "holdout_first_hour", "holdout_last_hour",
                "holdout_rows"} <= set(e)


def test_the_fresh_forecast_speaks_and_the_stale_alert_resolves(handover, first_wave):
    prom = handover["prom"]
    issued = pd.Timestamp(first_wave["forecast"]["issue_time"])
    assert issued >= NOW - pd.Timedelta(hours=2)  # forecasts for the real upcoming hours
    wait_until(lambda: not prom.instant('ALERTS{alertname="ForecastStale",location="delhi"}'),
               60, what="ForecastStale to resolve after the fresh forecast")
    # every air-quality alert since the hand-over is about a forecast issued within the limit:
    # the age from the pushed issue time as of each step (a rule evaluated at that step read
    # it or an older sample, never a newer one; the recorded aq:forecast_age_seconds of
    # another rule group may lag an evaluation behind)
    firing = prom.range('ALERTS{alertname="ForecastAQIUnhealthy"}', step="1s")
    ages = prom.range("time() - max by (location) (aq_forecast_issue_timestamp_seconds)",
                      step="1s")
    limit = float(prom.instant("aq:forecast_max_age_seconds")[0]["value"][1])
    age_at = {(s["metric"]["location"], int(float(t))): float(v)
              for s in ages for t, v in s["values"]}
    for series in firing:
        loc = series["metric"]["location"]
        for t, _ in series["values"]:
            age = age_at.get((loc, int(float(t))))
            assert age is None or age <= limit, (loc, t, age)


# ---------------------------------------------------------------- refused, forced, logged


@pytest.fixture(scope="module")
def second_wave(handover, first_wave):
    """A retraining whose candidate the gate refuses (it asks for more skill than any has), a
    backtest, then a predict run with a promotion landing between its batches and its
    finalisation (the `dvc` pool held at 0 slots keeps the finalisation waiting)."""
    api, paths, root = handover["api"], handover["paths"], handover["root"]
    write_params(root, {**PARAMS, "promotion": {"min_skill": 0.99, "tolerance": 1.0}})
    refused = api.trigger("aq_retrain", None)
    window = {"start": f"{NOW - 3 * DAY:%Y-%m-%d}", "end": f"{NOW:%Y-%m-%d}",
              "model": "champion", "refit_every_days": 0}
    backtest = api.call("POST", "/dags/aq_backtest/dagRuns",
                        json={"logical_date": None, "conf": window})["dag_run_id"]
    api.wait_finished([("aq_retrain", refused), ("aq_backtest", backtest)],
                      timeout=WAVE_TIMEOUT_S)
    write_params(root, PARAMS)
    candidate = json.loads(paths.promotion_report.read_text())["candidate"]

    pinned = Registry(paths).champion_version()
    # the refused candidate, or (if nothing new was trained) make run's champion: another
    # registered version becomes champion while the run is between batches and finalisation
    other = candidate if candidate != pinned else handover["first_champion"]
    pool = api.call("GET", "/pools/dvc")
    body = {k: pool[k] for k in ("description", "include_deferred")} | {"pool": "dvc"}
    api.call("PATCH", "/pools/dvc", json={**body, "slots": 0})
    try:
        forced = api.trigger("aq_predict", None)

        def between():
            tis = api.task_instances("aq_predict", forced)
            batches = [t for t in tis if t["task_id"] == "predict_batch"]
            final = next(t for t in tis if t["task_id"] == "predict")
            return (batches and all(t["state"] == "success" for t in batches)
                    and final["state"] in ("scheduled", "queued"))

        wait_until(between, 900, interval=2, what="the predict batches done, the finalisation "
                                                   "waiting for the dvc pool")
        assert Registry(paths).promote(other)  # what a retraining's promote does
    finally:
        api.call("PATCH", "/pools/dvc", json={**body, "slots": 1})
    api.wait_finished([("aq_predict", forced)], timeout=WAVE_TIMEOUT_S)
    wait_until(lambda: settled(api), WAVE_TIMEOUT_S, interval=5, what="every run to finish")
    return {"refused": refused, "backtest": backtest, "forced": forced, "pinned": pinned,
            "promoted": other}


def test_a_refused_promotion_is_a_skipped_task_with_its_reasons(handover, second_wave):
    api = handover["api"]
    run_id = second_wave["refused"]
    assert api.run_state("aq_retrain", run_id) == "success"
    promote = next(t for t in api.task_instances("aq_retrain", run_id)
                   if t["task_id"] == "promote")
    assert promote["state"] == "skipped"
    xcom = api.call("GET", f"/dags/aq_retrain/dagRuns/{run_id}/taskInstances/promote/"
                    "xcomEntries/refused")
    assert "does not beat persistence" in json.dumps(xcom["value"])
    summary = subprocess.run([sys.executable, "-m", "pipeline", "summary"], cwd=handover["root"],
                             env=step_env(handover["root"], handover["pushgateway"]),
                             capture_output=True, text=True, timeout=120, check=True).stdout
    assert "REFUSED by the promotion gate" in summary
    assert handover["pushgateway"].value("aq_promotion_refused_timestamp_seconds",
                                         step="promote") > 0


def test_a_promotion_between_batches_and_finalisation_leaves_the_run_green(handover,
                                                                           second_wave):
    api, paths = handover["api"], handover["paths"]
    run_id = second_wave["forced"]
    assert api.run_state("aq_predict", run_id) == "success", failure_report(
        paths, [("aq_predict", run_id)])
    latest = pd.read_parquet(paths.latest_predictions)
    assert set(latest["model_version"]) == {second_wave["pinned"]}
    assert Registry(paths).champion_version() == second_wave["promoted"]
    # dvc.lock was not told the new champion's forecasts exist: the next run (or dvc repro)
    # forecasts with it
    status = run(["dvc", "status", "predict"], cwd=handover["root"]).stdout
    assert "models/champion.json" in status or "changed" in status, status


def task_logs(paths: ProjectPaths, dag_id: str, run_id: str) -> dict[str, list[dict]]:
    run_dir = paths.airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    logs = {}
    for log_file in sorted(run_dir.rglob("*.log")):
        events = []
        for raw in log_file.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(raw))
            except ValueError:
                events.append({"event": raw, "logger": "<not json>"})
        logs[str(log_file.relative_to(run_dir))] = events
    return logs


def foreign(event: dict) -> bool:
    """A line that is neither the step's (``pipeline.*``, the DAG files' ``aq_*``) nor
    Airflow's frame around it (``task``, ``airflow.*``): a relayed warning, a third-party
    library's logger, raw stderr."""
    logger = str(event.get("logger") or "")
    if logger == "task.stderr" or logger.startswith("py.warnings"):
        return True
    return not logger.startswith(("pipeline", "aq_", "airflow", "task"))


def test_each_task_log_holds_the_steps_lines(handover, first_wave, second_wave):
    """The predict, predict_batch, backtest, train and the other tasks of the hand-over."""
    paths = handover["paths"]
    runs = [(d, r["dag_run_id"]) for d, rs in first_wave["runs"].items() for r in rs]
    runs += [("aq_retrain", second_wave["refused"]), ("aq_backtest", second_wave["backtest"]),
             ("aq_predict", second_wave["forced"])]
    seen, problems = Counter(), []
    for dag_id, run_id in runs:
        for name, events in task_logs(paths, dag_id, run_id).items():
            seen[name.split("/")[0]] += 1
            others = [e for e in events if foreign(e)]
            if len(others) > FOREIGN_LIMIT:
                shown = Counter(f"{e.get('logger')}: {str(e.get('event'))[:120]}"
                                for e in others).most_common(5)
                problems.append(f"{dag_id}/{name}: {len(others)} foreign lines, e.g. {shown}")
            size = (paths.airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
                    / name).stat().st_size
            if size > 200_000:
                problems.append(f"{dag_id}/{name}: {size} bytes")
    for task in ("task_id=predict", "task_id=predict_batch", "task_id=backtest",
                 "task_id=train"):
        assert seen[task], f"no log of {task}: {sorted(seen)}"
    assert problems == []


@pytest.mark.browser
def test_the_grid_shows_the_refusal(handover, second_wave, tmp_path_factory):
    """In a real browser: the refused run's promote task reads "skipped" without a log."""
    from playwright.sync_api import sync_playwright

    info, run_id = handover["info"], second_wave["refused"]
    shots = tmp_path_factory.mktemp("grid")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"{info['airflow UI']}/auth/login/", timeout=60_000)
            page.fill("input[name=username]", info["airflow user"])
            page.fill("input[name=password]", info["airflow password"])
            page.keyboard.press("Enter")
            page.wait_for_url(lambda url: "/login" not in url, timeout=60_000)
            page.goto(f"{info['airflow UI']}/dags/aq_retrain/runs/{run_id}/tasks/promote",
                      timeout=60_000)
            page.get_by_text("skipped", exact=False).first.wait_for(timeout=60_000)
            page.screenshot(path=str(shots / "promote-task.png"), full_page=True)
            text = page.inner_text("body")
            page.goto(f"{info['airflow UI']}/dags/aq_retrain/runs/{run_id}", timeout=60_000)
            page.wait_for_timeout(3000)
            page.screenshot(path=str(shots / "grid.png"), full_page=True)
        finally:
            browser.close()
    print(f"screenshots in {shots}")
    assert "skipped" in text.lower()
