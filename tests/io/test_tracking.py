"""MLflow tracking without a server: settings, the queue's format and its bound (the real
server is in tests/mlops/test_tracking.py)."""

from __future__ import annotations

import json
import logging

import pytest

from pipeline.io import tracking
from pipeline.io.tracking import ModelRef, RunRecord, Tracker
from pipeline.settings import SettingsError, TrackingSettings
from tests.conftest import free_port


@pytest.mark.parametrize("raw", [None, "", "off", "OFF", "  "])
def test_tracking_is_off_unless_a_server_is_named(raw):
    env = {} if raw is None else {"AQ_MLFLOW_TRACKING_URI": raw}
    assert not TrackingSettings.from_env(env).enabled


@pytest.mark.parametrize("raw", ["sqlite:///mlflow.db", "file:/tmp/mlruns", "127.0.0.1:5000",
                                 "databricks"])
def test_a_tracking_uri_the_rest_client_cannot_use_is_refused_naming_the_variable(raw):
    with pytest.raises(SettingsError, match="AQ_MLFLOW_TRACKING_URI"):
        TrackingSettings.from_env({"AQ_MLFLOW_TRACKING_URI": raw})


def test_mlflows_own_bounds_and_credentials_are_read_and_the_token_never_shows():
    settings = TrackingSettings.from_env({
        "AQ_MLFLOW_TRACKING_URI": "https://mlflow.example.org/", "MLFLOW_TRACKING_TOKEN":
        "tok-1234567890", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    assert settings.uri == "https://mlflow.example.org"
    assert (settings.timeout_s, settings.max_retries) == (3.0, 0)
    assert "tok-1234567890" not in repr(settings)
    with pytest.raises(SettingsError, match="MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        TrackingSettings.from_env({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "-1"})


def record(tmp_path, step="train") -> RunRecord:
    model_dir = tmp_path / "candidate"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "model.skops").write_bytes(b"skops bytes")
    (model_dir / "metadata.json").write_text("{}")
    plot = tmp_path / "chart.png"
    plot.write_bytes(b"png")
    return RunRecord(step=step, name=f"{step} v1", start_ms=1, params={"model.loss": "x"},
                     metrics={"pm2_5/6/mae": 1.5}, tags={"aq.version": "v1"},
                     artifacts={"backtest/chart.png": plot},
                     model=ModelRef("v1", model_dir, "abc", upload=True),
                     aliases={"candidate": "v1"}, documents={"data/extents.json": {"a": 1}})


def down_tracker(tmp_path) -> Tracker:
    settings = TrackingSettings(uri=f"http://127.0.0.1:{free_port()}", timeout_s=1,
                                max_retries=0)
    return Tracker(settings, tmp_path / ".tracking" / "queue")


def test_a_queued_run_keeps_everything_it_logs_even_if_the_files_change(tmp_path, caplog):
    tracker = down_tracker(tmp_path)
    original = record(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert tracker.log(original) == "queued"
        assert tracker.log(record(tmp_path, "evaluate")) == "queued"
    assert sum("not reachable" in r.getMessage() for r in caplog.records) == 1  # once
    # the project rewrites its files atomically (a new inode): the queued copy stays
    replacement = tmp_path / "candidate" / "model.skops.tmp"
    replacement.write_bytes(b"a newer model")
    replacement.replace(tmp_path / "candidate" / "model.skops")
    first = tracker.queued()[0]
    loaded = RunRecord.from_json(json.loads((first / "run.json").read_text()),
                                 first)
    assert loaded.files()["model/model.skops"].read_bytes() == b"skops bytes"
    assert loaded.artifacts["backtest/chart.png"].read_bytes() == b"png"
    assert (loaded.params, loaded.metrics, loaded.aliases, loaded.documents) == (
        original.params, original.metrics, original.aliases, original.documents)


def test_a_full_queue_says_which_run_was_not_logged(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tracking, "MAX_QUEUED_RUNS", 1)
    tracker = down_tracker(tmp_path)
    assert tracker.log(record(tmp_path)) == "queued"
    with caplog.at_level(logging.ERROR):
        assert tracker.log(record(tmp_path, "promote")) == "not logged"
    assert any("promote" in r.getMessage() and "NOT logged" in r.getMessage()
               for r in caplog.records)
    assert len(tracker.queued()) == 1


def test_off_logs_nothing_and_writes_nothing(tmp_path):
    tracker = Tracker(TrackingSettings(), tmp_path / "queue")
    assert tracker.log(record(tmp_path)) == "off"
    assert not (tmp_path / "queue").exists()
