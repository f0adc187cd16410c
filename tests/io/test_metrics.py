"""The metrics reporter, through its registry and a real Pushgateway binary on a free port."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from pipeline.context import Context
from pipeline.io.metrics import CATALOGUE, MetricsReporter, StepRun
from pipeline.settings import Settings
from pipeline.steps import ingest
from tests.conftest import free_port
from tests.monitoring import gateway_samples, gateway_value, running_pushgateway

JOB = "aq_test"


@pytest.fixture
def gateway(tmp_path):
    with running_pushgateway(tmp_path / ".stack") as (_, url):
        yield url


def reporter(url: str | None, timeout: float = 2.0) -> MetricsReporter:
    return MetricsReporter(Settings(pushgateway_url=url, metrics_job=JOB,
                                    push_timeout_s=timeout))


# ------------------------------------------------------------------ the registry


def test_success_records_outcome_duration_and_time_in_the_registry():
    before = time.time()
    with reporter(None).step("train") as run:
        time.sleep(0.05)
        run.rows(rows_in=10, rows_out=8, quarantined=2)
    reg = run.registry
    assert reg.get_sample_value("aq_step_success") == 1
    assert reg.get_sample_value("aq_step_duration_seconds") >= 0.05
    assert before <= reg.get_sample_value("aq_step_last_success_timestamp_seconds") <= time.time()
    assert reg.get_sample_value("aq_step_last_failure_timestamp_seconds") is None
    assert reg.get_sample_value("aq_step_rows_quarantined") == 2


def failing_evaluate(run: StepRun) -> None:
    run.set("aq_model_mae", 3.5, target="pm2_5", horizon=6)
    raise ValueError("bad")


def test_failure_records_outcome_and_keeps_what_the_step_had_set():
    with pytest.raises(ValueError, match="bad"), reporter(None).step("evaluate") as run:
        failing_evaluate(run)
    reg = run.registry
    assert reg.get_sample_value("aq_step_success") == 0
    assert reg.get_sample_value("aq_step_last_failure_timestamp_seconds") > 0
    assert reg.get_sample_value("aq_step_last_success_timestamp_seconds") is None
    assert reg.get_sample_value("aq_model_mae", {"target": "pm2_5", "horizon": "6"}) == 3.5


def test_info_metric_and_unknown_names():
    run = StepRun("promote")
    run.info("aq_champion_info", {"version": "v7"})
    assert run.registry.get_sample_value("aq_champion_info", {"version": "v7"}) == 1
    with pytest.raises(KeyError, match="not in the catalogue"):
        run.set("aq_made_up", 1)


def test_without_a_url_nothing_is_pushed_and_only_debug_is_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="pipeline.io.metrics")
    rep = reporter(None)
    with rep.step("ingest"):
        pass
    assert rep.push(StepRun("ingest")) is False
    records = [r for r in caplog.records if r.name == "pipeline.io.metrics"]
    assert records
    assert all(r.levelno == logging.DEBUG for r in records)


# ------------------------------------------------------------------ a real Pushgateway


@pytest.mark.stack
def test_a_step_pushes_its_metrics_under_job_and_step(gateway):
    with reporter(gateway).step("predict") as run:
        run.set("aq_forecast_max_aqi_24h", 180.0, location="delhi", target="pm2_5")
    assert gateway_value(gateway, "aq_step_success", job=JOB, step="predict") == 1
    assert gateway_value(gateway, "aq_forecast_max_aqi_24h", job=JOB, step="predict",
                         location="delhi", target="pm2_5") == 180.0
    # the grouping key is job + step only: no run id, no timestamp among the labels
    for sample in gateway_samples(gateway, JOB):
        extra = set(sample.labels) - {"job", "step", "instance"}
        spec = CATALOGUE.get(sample.name) or CATALOGUE.get(sample.name + "_info")
        allowed = set(spec.labels) if spec else set()
        assert extra <= allowed, (sample.name, sample.labels)


@pytest.mark.stack
def test_failure_is_pushed_before_the_error_reaches_the_caller(gateway):
    rep = reporter(gateway)
    try:
        with rep.step("evaluate"):
            raise RuntimeError("holdout is empty")
    except RuntimeError:
        # the caller (the CLI, Airflow) may exit right here: the failure must be out already
        assert gateway_value(gateway, "aq_step_success", job=JOB, step="evaluate") == 0
        assert gateway_value(gateway, "aq_step_last_failure_timestamp_seconds",
                             job=JOB, step="evaluate") > 0
    else:
        pytest.fail("the step's error was swallowed")


@pytest.mark.stack
def test_pushadd_keeps_the_last_failure_after_a_success(gateway):
    rep = reporter(gateway)
    with pytest.raises(RuntimeError), rep.step("train"):
        raise RuntimeError("boom")
    failed_at = gateway_value(gateway, "aq_step_last_failure_timestamp_seconds",
                              job=JOB, step="train")
    with rep.step("train"):
        pass
    assert gateway_value(gateway, "aq_step_success", job=JOB, step="train") == 1
    assert gateway_value(gateway, "aq_step_last_failure_timestamp_seconds",
                         job=JOB, step="train") == failed_at
    assert gateway_value(gateway, "aq_step_last_success_timestamp_seconds",
                         job=JOB, step="train") >= failed_at
    # and a later failure keeps the last success
    with pytest.raises(RuntimeError), rep.step("train"):
        raise RuntimeError("boom again")
    assert gateway_value(gateway, "aq_step_success", job=JOB, step="train") == 0
    assert gateway_value(gateway, "aq_step_last_success_timestamp_seconds",
                         job=JOB, step="train") is not None


@pytest.mark.stack
def test_steps_do_not_overwrite_each_other(gateway):
    rep = reporter(gateway)
    with rep.step("ingest") as run:
        run.rows(rows_in=5)
    with rep.step("drift") as run:
        run.set("aq_drift_share", 0.5)
    assert gateway_value(gateway, "aq_step_rows_in", job=JOB, step="ingest") == 5
    assert gateway_value(gateway, "aq_drift_share", job=JOB, step="drift") == 0.5


# ------------------------------------------------------------------ Pushgateway down


@pytest.mark.stack
def test_gateway_down_step_still_succeeds_with_a_warning_quickly(tmp_path, caplog):
    with running_pushgateway(tmp_path / ".stack") as (manager, url):
        manager.stop("pushgateway")  # it was there, now it is gone
    caplog.set_level(logging.WARNING, logger="pipeline.io.metrics")
    started = time.monotonic()
    with reporter(url).step("ingest") as run:
        run.rows(rows_in=1)
    elapsed = time.monotonic() - started
    assert run.registry.get_sample_value("aq_step_success") == 1
    assert elapsed < 5, f"push retries took {elapsed:.1f}s"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("could not push metrics of step ingest" in w for w in warnings)


def test_gateway_that_hangs_is_bounded_by_the_push_timeout(caplog):
    """A listening socket that never answers: each attempt times out, the step goes on."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with reporter(url, timeout=0.5).step("predict"):
            pass
        elapsed = time.monotonic() - started
    # 3 attempts x 0.5 s + backoff 0.5 + 1.0 s = 3 s
    assert elapsed < 6, f"took {elapsed:.1f}s"
    assert any("could not push" in r.getMessage() for r in caplog.records)


def test_gateway_refusing_connections_is_not_an_error():
    url = f"http://127.0.0.1:{free_port()}"
    assert reporter(url).push(StepRun("ingest")) is False


# ------------------------------------------------------------------ bounded series


@pytest.mark.stack
def test_series_count_does_not_grow_with_runs(gateway, project):
    """Repeated real ingest runs (and a failing one) leave the same number of series."""
    ctx = Context.load(project, settings=Settings(pushgateway_url=gateway, metrics_job=JOB))

    def series() -> set[tuple]:
        return {(s.name, tuple(sorted(s.labels.items()))) for s in gateway_samples(gateway, JOB)}

    ingest.run(ctx, start="2025-01-01", end="2025-01-03")
    after_one = series()
    assert len(after_one) > 20  # step, quality, per-location and per-variable series
    for day in range(3, 9):
        ingest.run(ctx, start=f"2025-01-{day:02d}", end=f"2025-01-{day + 1:02d}")
    for _ in range(3):  # failing runs too
        with pytest.raises(RuntimeError), ctx.reporter.step("ingest"):
            raise RuntimeError("provider down")
    # failures add their last-failure series, once
    grown = series() - after_one
    assert {name for name, _ in grown} <= {"aq_step_last_failure_timestamp_seconds"}
    assert len(series()) <= len(after_one) + 1
