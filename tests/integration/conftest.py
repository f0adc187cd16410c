"""One observed pipeline run shared by the observability tests.

A temporary project runs every step with the CLI (synthetic source, as `make run` does by
default) against the real monitoring stack on free ports (fast intervals), and leaves
Prometheus full of real data. One ingest before it, from a second project whose source is
Open-Meteo replayed by a local server, supplies the HTTP ingestion metrics (the synthetic
source makes no requests); the replayed series are exactly 24 h-periodic, so they cannot
train a model that beats persistence at 24 h, hence the synthetic data for the rest.
The serving app then serves the project's champion under gunicorn on the stack's serving
port, and a short `make loadtest` run gives it traffic (and pushes its result).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from pipeline.paths import ProjectPaths
from stack import serving_local
from tests.conftest import REPO, make_project, write_params
from tests.monitoring import RunningStack, prom_query, running_stack, wait_until
from tests.replay_server import ReplayServer, open_meteo_handler

AQ, FORECAST, ARCHIVE = "/v1/air-quality", "/v1/forecast", "/v1/archive"
PREVIOUS = "/previous-runs/v1/forecast"
JOB = "aq_pipeline"
# the window ends at the current hour, as a live deployment's does: the last forecast is
# fresh, so the air-quality alert may speak for it (an older one raises ForecastStale)
NOW = pd.Timestamp.now(tz="UTC").floor("h")
DAY = pd.Timedelta(days=1)


def day(offset: float) -> str:
    return (NOW + offset * DAY).isoformat()


SMALL = {"source": {"kind": "synthetic", "start": f"{NOW - 42 * DAY:%Y-%m-%d}",
                    "end": f"{NOW + DAY:%Y-%m-%d}",  # the steps pass --end: up to NOW
                    # Delhi's emissions quadruple: unhealthy forecasts (the domain alert) and
                    # drift to observe
                    "synthetic": {"scenarios": [{"kind": "emission_shift",
                                                 "start": f"{NOW - 11 * DAY:%Y-%m-%d}",
                                                 "variable": "pm2_5", "factor": 4.0,
                                                 "locations": ["delhi"]}]}},
         "evaluation": {"holdout_days": 7}, "model": {"max_iter": 40},
         "backtest": {"days": 7},  # the candidate's holdout
         # this small model may lose to persistence at 1 h: promote anyway, it is observed
         # here, not judged (ModelSkillBelowPersistence then has real data to fire on)
         "promotion": {"min_skill": -1.0}}
OPEN_METEO = {"source": {"kind": "open_meteo", "start": "2025-02-01", "end": "2025-02-03",
                         "open_meteo": {"requests_per_second": 100, "backoff_s": 0.01,
                                        "max_retries": 1}}}
FIRST_END = day(-2)  # forecasts issued here are scored against the data ingested after
RERUN = ("--start", day(-1), "--end", day(0))  # the series-count test ingests this again


@dataclass
class ObservedRun:
    stack: RunningStack
    project: Path
    env: dict[str, str]
    timings: dict[str, float]
    started: float = 0.0  # unix time the run began: range queries start here

    def step(self, name: str, *args: str, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """``python -m pipeline <name>`` in the project, as dvc.yaml and Airflow run it."""
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pipeline", name, *args],
                              cwd=self.project, env=env or self.env, capture_output=True,
                              text=True, timeout=600)
        self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - started
        if check and proc.returncode != 0:
            raise AssertionError(f"step {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc

    def query(self, expr: str) -> list[dict]:
        return prom_query(self.stack.prometheus, expr)

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict]:
        return wait_until(lambda: self.query(expr), timeout=timeout, interval=0.5,
                          what=f"Prometheus to answer {expr!r}")


@pytest.fixture(scope="session")
def observed_run(tmp_path_factory) -> Iterator[ObservedRun]:
    started = time.time()
    root = tmp_path_factory.mktemp("observability")
    project = make_project(root / "project", overrides=SMALL)
    http_project = make_project(root / "http_project", overrides=OPEN_METEO)
    with ReplayServer() as provider, running_stack(root) as st:
        for path in (AQ, FORECAST, ARCHIVE, PREVIOUS):
            provider.route(path, open_meteo_handler())
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AQ_")},
            "AQ_PROJECT_DIR": str(project),
            "AQ_PUSHGATEWAY_URL": st.pushgateway,
            "AQ_OPEN_METEO_AIR_QUALITY_URL": provider.url(AQ),
            "AQ_OPEN_METEO_FORECAST_URL": provider.url(FORECAST),
            "AQ_OPEN_METEO_ARCHIVE_URL": provider.url(ARCHIVE),
            "AQ_OPEN_METEO_PREVIOUS_RUNS_URL": provider.url(PREVIOUS),
            "DVC_NO_ANALYTICS": "1",
        }
        run = ObservedRun(st, http_project, {**env, "AQ_PROJECT_DIR": str(http_project)}, {})
        run.step("ingest")
        run = ObservedRun(st, project, env, run.timings)
        run.step("ingest", "--end", FIRST_END)
        # a step run before its input exists fails cleanly and reports it (pushadd keeps its
        # last-failure time after the later success)
        early = run.step("predict", check=False)
        assert early.returncode == 1, early.stderr
        for name in ("preprocess", "train", "evaluate", "backtest", "promote"):
            run.step(name)
        # a second champion, a rollback to the first and the roll-forward again: the
        # champion history the dashboards annotate (each state scraped before the next)
        for name in ("train", "evaluate", "promote", "rollback"):
            run.step(name)
        run.wait_for('aq_champion_switched_timestamp_seconds{action="rollback"}')
        run.step("promote")
        run.wait_for('aq_champion_switched_timestamp_seconds{action="promote"}')
        # a candidate the gate refuses (it asks for more skill than any has): the refusal
        # the dashboards mark; the champion stays
        write_params(project, {**SMALL, "promotion": {"min_skill": 0.99}})
        run.step("promote")
        write_params(project, SMALL)
        run.wait_for("aq_promotion_refused_timestamp_seconds")
        run.step("predict")
        run.step("ingest", "--start", FIRST_END, "--end", day(0))
        run.step("score")
        run.step("drift")
        run.step("predict")  # from the newest hour: the fresh forecast the alerts speak for
        # every step's push is scraped and recorded (1 s intervals) before the tests look
        run.wait_for(f'count(aq_step_success{{job="{JOB}"}} == 1) >= 10')  # one per step
        run.wait_for(f'count(aq:step_seconds_since_success{{job="{JOB}"}}) >= 10')
        run.started = started
        paths = ProjectPaths(project)
        try:
            serving_local.start(paths, st.ports, timeout=120)
            serving_local.wait_ready(st.ports.url("serving"), timeout=120)
            load = subprocess.run(
                [sys.executable, "-m", "serving.loadtest", "--url", st.ports.url("serving"),
                 "--users", "4", "--run-time", "5"], capture_output=True, text=True,
                timeout=180, env={**env, "PYTHONPATH": str(REPO)})
            assert load.returncode == 0, load.stdout + load.stderr
            run.wait_for("aq:serving_latency_seconds:p99_5m", timeout=60)
            run.wait_for("aq_loadtest_slo_passed", timeout=60)
            yield run
        finally:
            serving_local.stop(paths)
