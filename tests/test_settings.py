"""Environment settings: secrets never show, bad numbers are named."""

from __future__ import annotations

import logging
import os

import pytest

from pipeline.settings import Secret, Settings


def test_secret_is_redacted_everywhere(caplog):
    settings = Settings.from_env({"OPENWEATHERMAP_API_KEY": "abc123secret"})
    assert settings.openweathermap_api_key.reveal() == "abc123secret"
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("settings: %s %r", settings, settings)
    assert "abc123secret" not in caplog.text
    assert "abc123secret" not in repr(settings) + str(settings.openweathermap_api_key)
    assert not Secret("")


def test_env_overrides_and_defaults():
    settings = Settings.from_env(
        {"AQ_PUSHGATEWAY_URL": "http://127.0.0.1:1", "AQ_HTTP_TIMEOUT_S": "3"}
    )
    assert settings.pushgateway_url == "http://127.0.0.1:1"
    assert settings.http_timeout_s == 3.0
    assert Settings.from_env({}).pushgateway_url is None


def test_bad_number_names_the_variable():
    with pytest.raises(ValueError, match="AQ_HTTP_TIMEOUT_S"):
        Settings.from_env({"AQ_HTTP_TIMEOUT_S": "soon"})


def test_http_bounds_come_from_the_environment():
    settings = Settings.from_env({"AQ_HTTP_TOTAL_S": "45", "AQ_HTTP_MAX_BYTES": "1048576"})
    assert (settings.http_total_s, settings.http_max_bytes) == (45.0, 1048576)
    defaults = Settings.from_env({})
    assert defaults.http_max_bytes == 64 * 1024 * 1024
    assert defaults.http_total_s == 120.0
    with pytest.raises(ValueError, match="AQ_HTTP_MAX_BYTES"):
        Settings.from_env({"AQ_HTTP_MAX_BYTES": "1.5e6"})


def test_serving_settings_from_env_and_bad_values_named():
    from pipeline.settings import ServingSettings

    settings = ServingSettings.from_env({"AQ_SERVING_WORKERS": "4",
                                         "AQ_SERVING_MAX_BODY_BYTES": "1024",
                                         "AQ_SERVING_SLO_LATENCY_S": "0.05"})
    assert (settings.workers, settings.max_body_bytes, settings.slo_latency_s) == (4, 1024, 0.05)
    assert ServingSettings.from_env({}) == ServingSettings()
    with pytest.raises(ValueError, match="AQ_SERVING_WORKERS"):
        ServingSettings.from_env({"AQ_SERVING_WORKERS": "two"})
    with pytest.raises(ValueError, match="AQ_SERVING_SLO_ERROR_RATIO"):
        ServingSettings.from_env({"AQ_SERVING_SLO_ERROR_RATIO": "1.5"})


def test_celery_scale_from_env():
    """The scale-out profile's workers x task processes (pipeline/ops/airflow_celery.py)."""
    settings = Settings.from_env({"AQ_CELERY_WORKERS": "1", "AQ_CELERY_CONCURRENCY": "4"})
    assert (settings.celery_workers, settings.celery_concurrency) == (1, 4)
    defaults = Settings.from_env({})
    assert (defaults.celery_workers, defaults.celery_concurrency) == (2, 2)
    with pytest.raises(ValueError, match="AQ_CELERY_CONCURRENCY"):
        Settings.from_env({"AQ_CELERY_CONCURRENCY": "2.5"})


def test_worker_processes_from_env_and_bad_values_named():
    assert Settings.from_env({"AQ_PROCESSES": "3"}).processes == 3
    assert Settings.from_env({}).processes == min(os.cpu_count() or 1, 8)
    for bad in ("two", "0", "-1", "1.5"):
        with pytest.raises(ValueError, match="AQ_PROCESSES"):
            Settings.from_env({"AQ_PROCESSES": bad})
