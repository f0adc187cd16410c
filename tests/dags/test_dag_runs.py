"""Each DAG run end to end with ``dag.test()`` in a temporary project, real DVC and Pushgateway.

The module's tests share one project and run in order, as a user would:
history is backfilled, an hourly ingestion adds an hour (twice: idempotent),
the nightly retraining promotes a model, the forecasts follow. A broken DVC
pipeline then shows the failure callback at work, and a live source is
ingested from the local replay server.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO
from tests.dags.conftest import make_dvc_project, run, seed_history

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

HOUR = datetime(2025, 3, 1, 3, tzinfo=UTC)  # logical date: data interval [02:00, 03:00)
LOCATIONS = ("berlin", "delhi")


@pytest.fixture(scope="module")
def project(tmp_path_factory, airflow_db, pushgateway, monkeypatch_module) -> Path:
    root = make_dvc_project(tmp_path_factory.mktemp("dagruns") / "project")
    seed_history(root)
    monkeypatch_module.setenv("AQ_PROJECT_DIR", str(root))
    monkeypatch_module.setenv("AQ_TASK_RETRIES", "0")  # a failure fails now, not in minutes
    monkeypatch_module.setenv("AQ_INGEST_BATCH_SIZE", "1")  # one mapped task per location
    return root


@pytest.fixture(scope="module")
def dags(project):
    """The DAGs, parsed once the project's environment is set (it is read at parse time)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag


def data_md5(root: Path) -> str:
    return yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]


def raw_snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "data" / "raw").rglob("*.parquet"))
    }


def hours_stored(root: Path, location: str, month: str = "2025-03") -> set[pd.Timestamp]:
    path = root / "data/raw/source=synthetic" / f"location={location}" / f"month={month}.parquet"
    return set(pd.read_parquet(path, columns=["time"])["time"]) if path.exists() else set()


def asset_events(run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetModel.name, AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetEvent.source_run_id == run_id)
        ).all()
    return [{"asset": name, **extra} for name, extra in rows]


def test_hourly_ingestion_stores_checks_versions_and_announces_the_hour(project, dags,
                                                                         pushgateway):
    before_md5 = data_md5(project)
    assert all(not hours_stored(project, loc) for loc in LOCATIONS)

    dag_run = dags.get_dag("aq_ingest").test(logical_date=HOUR)

    assert dag_run.state == "success"
    # the history ends 2025-02-28T23:00: the run fills the two hours after it, then its own
    # data interval [02:00, 03:00), and nothing beyond it
    caught_up = set(pd.date_range("2025-03-01T00:00", periods=3, freq="h", tz="UTC"))
    for loc in LOCATIONS:
        assert hours_stored(project, loc) == caught_up
    # DVC recorded the new data and pushed it to the remote
    md5 = data_md5(project)
    assert md5 != before_md5
    assert "up to date" in run(["dvc", "status", "data.dvc"], cwd=project).stdout
    cloud = run(["dvc", "status", "-c", "-r", "local", "data.dvc"], cwd=project).stdout
    assert "in sync" in cloud
    # the Asset event that schedules aq_predict names that version and interval
    events = asset_events(dag_run.run_id)
    assert [(e["asset"], e["md5"], e["interval_end"]) for e in events] == [
        ("aq_raw_data", md5, "2025-03-01T03:00:00+00:00")
    ]
    # metrics: every task's step, and the per-location figures of BOTH mapped batches
    for step in ("ingest", "ingest_quality", "data_version"):
        assert pushgateway.value("aq_step_success", step=step) == 1, step
    for loc in LOCATIONS:
        assert pushgateway.value("aq_ingest_rows", step="ingest", location=loc) == 3, loc
        assert pushgateway.value("aq_ingest_location_success", step="ingest", location=loc) == 1


def test_rerunning_the_same_hour_is_idempotent(project, dags):
    files, md5 = raw_snapshot(project), data_md5(project)

    dag_run = dags.get_dag("aq_ingest").test(logical_date=HOUR)

    assert dag_run.state == "success"
    assert raw_snapshot(project) == files
    assert data_md5(project) == md5
    # nothing new stored: no Asset event, so aq_predict does not re-run for nothing
    assert asset_events(dag_run.run_id) == []
    assert dag_run.get_task_instance("data_version").state == "skipped"


def test_nightly_retraining_runs_every_stage_through_dvc_and_promotes(project, dags,
                                                                       pushgateway):
    dag_run = dags.get_dag("aq_retrain").test()

    assert dag_run.state == "success"
    champion = json.loads((project / "models" / "champion.json").read_text())
    promotion = json.loads((project / "reports" / "promotion.json").read_text())
    assert promotion["promoted"] is True
    assert promotion["champion"] == champion["version"]
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert {"preprocess", "train", "evaluate", "promote"} <= set(lock)
    # dvc.lock describes the workspace: nothing to reproduce for these stages
    status = run(["dvc", "status", "preprocess", "train", "evaluate", "promote"], cwd=project)
    assert "up to date" in status.stdout
    for step in ("preprocess", "train", "evaluate", "promote"):
        assert pushgateway.value("aq_step_success", step=step) == 1, step
    assert pushgateway.value("aq_promotion_promoted", step="promote") == 1


def test_forecasts_follow_with_accuracy_and_drift(project, dags, pushgateway):
    dag_run = dags.get_dag("aq_predict").test()

    assert dag_run.state == "success"
    forecasts = pd.read_parquet(project / "predictions" / "latest.parquet")
    assert set(forecasts["location_id"]) == set(LOCATIONS)
    assert len(forecasts) > 0
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert {"predict", "score", "drift"} <= set(lock)
    for step in ("predict", "score", "drift"):
        assert pushgateway.value("aq_step_success", step=step) == 1, step
    assert pushgateway.value("aq_forecast_rows", step="predict") == len(forecasts)


def test_a_backtest_runs_with_the_window_given_in_the_trigger_form(project, dags, pushgateway):
    conf = {"start": "2025-02-20", "end": "2025-02-27", "model": "champion",
            "refit_every_days": 0}
    dag_run = dags.get_dag("aq_backtest").test(run_conf=conf)

    assert dag_run.state == "success"
    out = project / "backtests" / re.sub(r"[^A-Za-z0-9_.-]", "_", dag_run.run_id)
    report = json.loads((out / "metrics.json").read_text())
    assert report["window"] == {"start": "2025-02-20T00:00:00+00:00",
                                "end": "2025-02-27T00:00:00+00:00"}
    champion = json.loads((project / "models" / "champion.json").read_text())["version"]
    assert report["model"]["version"] == champion
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert len(predictions) == len(LOCATIONS) * 2 * 7 * 24  # locations x horizons x hours
    assert pushgateway.value("aq_step_success", step="backtest") == 1
    skill = pushgateway.value("aq_backtest_skill", step="backtest", target="pm2_5", horizon="1")
    assert skill == pytest.approx(report["scores"]["pm2_5"]["1"]["skill"])

    # a window the champion learnt from is refused: the run fails, the step says why
    early = dags.get_dag("aq_backtest").test(run_conf={**conf, "start": "2025-01-20",
                                                       "end": "2025-01-27"})
    assert early.state == "failed"
    assert pushgateway.value("aq_step_success", step="backtest") == 0


def test_a_failure_outside_the_step_code_is_pushed_by_the_callback(project, dags, pushgateway):
    """DVC itself fails (its pipeline file is gone): no step code runs, the callback reports."""
    dvc_yaml = project / "dvc.yaml"
    kept = dvc_yaml.read_text()
    started = datetime.now(UTC).timestamp()
    assert pushgateway.value("aq_step_success", step="preprocess") == 1
    dvc_yaml.unlink()
    try:
        dag_run = dags.get_dag("aq_retrain").test()
    finally:
        dvc_yaml.write_text(kept)

    assert dag_run.state == "failed"
    assert pushgateway.value("aq_step_success", step="preprocess") == 0
    failed_at = pushgateway.value("aq_step_last_failure_timestamp_seconds", step="preprocess")
    assert failed_at is not None
    assert failed_at >= started


def test_live_source_is_ingested_from_the_replay_server(tmp_path, dags, pushgateway,
                                                       monkeypatch):
    from tests.replay_server import ReplayServer, open_meteo_handler, truth

    root = make_dvc_project(tmp_path / "live", {"source": {"kind": "open_meteo"}})
    monkeypatch.setenv("AQ_PROJECT_DIR", str(root))
    with ReplayServer() as server:
        for kind in ("air-quality", "forecast", "archive"):
            server.route(f"/v1/{kind}", open_meteo_handler())
            monkeypatch.setenv(f"AQ_OPEN_METEO_{kind.upper().replace('-', '_')}_URL",
                               server.url(f"/v1/{kind}"))

        dag_run = dags.get_dag("aq_ingest").test(logical_date=HOUR)

        assert dag_run.state == "success"
        assert server.requests_to("/v1/air-quality") or server.requests_to("/v1/archive")
    # nothing was stored: the first run fetches the configured history (source.start) up to
    # the end of its interval, in provider-sized chunks
    stored = pd.read_parquet(root / "data/raw/source=open_meteo/location=berlin")
    expected = pd.date_range("2025-01-01", "2025-03-01T03:00", freq="h", inclusive="left",
                             tz="UTC")
    assert list(stored["time"]) == list(expected)
    unix = int(pd.Timestamp("2025-03-01T02:00", tz="UTC").timestamp())
    assert stored["pm2_5"].iloc[-1] == pytest.approx(truth("pm2_5", 52.52, unix))
    assert "up to date" in run(["dvc", "status", "data.dvc"], cwd=root).stdout
    assert pushgateway.value("aq_step_success", step="data_version") == 1
