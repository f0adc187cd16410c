"""Environment settings: secrets never show, bad values are refused naming the variable, and
nothing but pipeline/settings.py reads the environment."""

from __future__ import annotations

import ast
import logging
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from pipeline.redaction import redact
from pipeline.settings import (
    CelerySettings,
    DagSettings,
    Ports,
    ServingSettings,
    Settings,
    SettingsError,
    StackSettings,
)
from tests.conftest import REPO


def test_secret_is_redacted_everywhere(caplog):
    settings = Settings.from_env({"OPENWEATHERMAP_API_KEY": "abc123secret"})
    assert settings.openweathermap_api_key.get_secret_value() == "abc123secret"
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("settings: %s %r", settings, settings)
    assert "abc123secret" not in caplog.text
    assert "abc123secret" not in repr(settings) + str(settings.openweathermap_api_key)
    assert not SecretStr("")
    assert redact("key=abc123secret") == "key=***"  # registered with pipeline/redaction.py


def test_secrets_built_in_code_are_registered_too():
    Settings(openweathermap_api_key=SecretStr("built-in-code-key"))
    assert redact("built-in-code-key") == "***"
    url = "redis://:the-redis-password-0123@127.0.0.1:6379/1"
    Settings.from_env({"AQ_RATE_LIMIT_REDIS_URL": url})
    assert redact("auth the-redis-password-0123 failed") == "auth *** failed"


def test_env_overrides_and_defaults():
    settings = Settings.from_env(
        {"AQ_PUSHGATEWAY_URL": "http://127.0.0.1:1", "AQ_HTTP_TIMEOUT_S": "3"}
    )
    assert settings.pushgateway_url == "http://127.0.0.1:1"
    assert settings.http_timeout_s == 3.0
    assert Settings.from_env({}).pushgateway_url is None
    assert Settings.from_env({"AQ_PUSHGATEWAY_URL": ""}).pushgateway_url is None  # empty: unset


def test_constructing_reads_no_environment(monkeypatch):
    """The environment has one door, from_env: defaults and tests stay what they say."""
    monkeypatch.setenv("AQ_HTTP_TIMEOUT_S", "7")
    monkeypatch.setenv("AQ_SERVING_PORT", "18000")
    assert Settings().http_timeout_s == 20.0
    assert Ports().serving == 8000
    assert Settings.from_env().http_timeout_s == 7.0
    assert Ports.from_env().serving == 18000


def test_bad_number_names_the_variable():
    with pytest.raises(ValueError, match="AQ_HTTP_TIMEOUT_S"):
        Settings.from_env({"AQ_HTTP_TIMEOUT_S": "soon"})
    with pytest.raises(SettingsError, match="AQ_HTTP_TIMEOUT_S='inf' is not a finite number"):
        Settings.from_env({"AQ_HTTP_TIMEOUT_S": "inf"})
    with pytest.raises(SettingsError, match="AQ_LOG_FORMAT='json' is not one of timestamped, "
                                            "plain"):
        Settings.from_env({"AQ_LOG_FORMAT": "json"})


def test_a_refused_secret_is_named_without_its_value():
    with pytest.raises(SettingsError) as refused:
        StackSettings.from_env({"AQ_REDIS_PASSWORD": "short secret"})
    assert "AQ_REDIS_PASSWORD must be at least 16 characters" in str(refused.value)
    assert "short secret" not in str(refused.value)


def test_http_bounds_come_from_the_environment():
    settings = Settings.from_env({"AQ_HTTP_TOTAL_S": "45", "AQ_HTTP_MAX_BYTES": "1048576"})
    assert (settings.http_total_s, settings.http_max_bytes) == (45.0, 1048576)
    defaults = Settings.from_env({})
    assert defaults.http_max_bytes == 64 * 1024 * 1024
    assert defaults.http_total_s == 120.0
    with pytest.raises(ValueError, match="AQ_HTTP_MAX_BYTES"):
        Settings.from_env({"AQ_HTTP_MAX_BYTES": "1.5e6"})


def test_serving_settings_from_env_and_bad_values_named():
    settings = ServingSettings.from_env({"AQ_SERVING_WORKERS": "4",
                                         "AQ_SERVING_MAX_BODY_BYTES": "1024",
                                         "AQ_SERVING_SLO_LATENCY_S": "0.05"})
    assert (settings.workers, settings.max_body_bytes, settings.slo_latency_s) == (4, 1024, 0.05)
    assert ServingSettings.from_env({}) == ServingSettings()
    with pytest.raises(ValueError, match="AQ_SERVING_WORKERS"):
        ServingSettings.from_env({"AQ_SERVING_WORKERS": "two"})
    with pytest.raises(ValueError, match="AQ_SERVING_SLO_ERROR_RATIO"):
        ServingSettings.from_env({"AQ_SERVING_SLO_ERROR_RATIO": "1.5"})


def test_ports_from_env_and_bad_ports_named():
    ports = Ports.from_env({"AQ_SERVING_PORT": "18000", "AQ_POSTGRES_PORT": "15432"})
    assert (ports.serving, ports.postgres, ports.prometheus) == (18000, 15432, 9090)
    assert ports.env()["AQ_SERVING_PORT"] == "18000"
    assert Ports.from_env(ports.env()) == ports  # what a child process sees
    assert ports.url("serving") == "http://127.0.0.1:18000"
    assert Ports().runbook_base() == "http://127.0.0.1:9095/runbook"
    with pytest.raises(SettingsError, match="AQ_REDIS_PORT='six' is not a whole number"):
        Ports.from_env({"AQ_REDIS_PORT": "six"})
    with pytest.raises(SettingsError, match="AQ_WEBHOOK_PORT='70000' must be below 65536"):
        Ports.from_env({"AQ_WEBHOOK_PORT": "70000"})


def test_celery_scale_from_env():
    """The scale-out profile's workers x task processes (stack/airflow_celery.py)."""
    settings = CelerySettings.from_env({"AQ_CELERY_WORKERS": "1", "AQ_CELERY_CONCURRENCY": "4"})
    assert (settings.workers, settings.concurrency) == (1, 4)
    defaults = CelerySettings.from_env({})
    assert (defaults.workers, defaults.concurrency) == (2, 2)
    with pytest.raises(ValueError, match="AQ_CELERY_CONCURRENCY"):
        CelerySettings.from_env({"AQ_CELERY_CONCURRENCY": "2.5"})


def test_dag_settings_from_env_and_bad_values_named():
    knobs = DagSettings.from_env({"AQ_RETRAIN_SCHEDULE": "30 3 * * 1",
                                  "AQ_MAX_QUARANTINE_SHARE": "0.2"})
    assert (knobs.retrain_schedule, knobs.max_quarantine_share) == ("30 3 * * 1", 0.2)
    assert DagSettings.from_env({}) == DagSettings()
    with pytest.raises(SettingsError, match="AQ_INGEST_BATCH_SIZE='0' must be >= 1"):
        DagSettings.from_env({"AQ_INGEST_BATCH_SIZE": "0"})
    with pytest.raises(SettingsError, match="AQ_MAX_QUARANTINE_SHARE='2' must be <= 1"):
        DagSettings.from_env({"AQ_MAX_QUARANTINE_SHARE": "2"})


def test_worker_processes_from_env_and_bad_values_named():
    assert Settings.from_env({"AQ_PROCESSES": "3"}).processes == 3
    assert Settings.from_env({}).processes == min(os.cpu_count() or 1, 8)
    for bad in ("two", "0", "-1", "1.5"):
        with pytest.raises(ValueError, match="AQ_PROCESSES"):
            Settings.from_env({"AQ_PROCESSES": bad})


# process plumbing a launcher extends for its children, not settings
PLUMBING = {"PATH", "PYTHONPATH"}


def environment_reads(path: Path) -> list[str]:
    """``os.environ.get(...)``, ``os.getenv(...)``, ``os.environ[...]`` reads in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        key = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if ast.unparse(node.func) in ("os.environ.get", "os.getenv", "environ.get"):
                key = node.args[0] if node.args else None
            else:
                continue
        elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
              and ast.unparse(node.value) in ("os.environ", "environ")):
            key = node.slice
        else:
            continue
        if not (isinstance(key, ast.Constant) and key.value in PLUMBING):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node)}")
    return found


def test_only_the_settings_module_reads_the_environment():
    """The product, the DAG files and the local stack read variables through
    pipeline/settings.py only (copying the whole environment for a child process is fine)."""
    files = [p for folder in ("pipeline", "serving", "dags", "stack", "grafana")
             for p in sorted((REPO / folder).rglob("*.py"))]
    found = [r for p in files if p != REPO / "pipeline" / "settings.py"
             for r in environment_reads(p)]
    assert found == []
