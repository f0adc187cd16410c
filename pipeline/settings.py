"""Environment settings and secrets: the only place that reads ``os.environ``.

ML settings live in ``params.yaml`` (see :mod:`pipeline.config`); this object
holds what differs between machines: endpoints, credentials, timeouts.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {key}={raw!r} is not a number") from exc
    if value <= 0:
        raise ValueError(f"environment variable {key}={raw!r} must be positive")
    return value


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {key}={raw!r} is not a whole number") from exc
    if value <= 0:
        raise ValueError(f"environment variable {key}={raw!r} must be positive")
    return value


def _count(env: Mapping[str, str], key: str, default: int) -> int:
    """A whole number >= 0 (a retry count: 0 is allowed)."""
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {key}={raw!r} is not a whole number") from exc
    if not 0 <= value <= 20:
        raise ValueError(f"environment variable {key}={raw!r} must be within 0..20")
    return value


TRACKING_OFF = ("", "off")


@dataclass(frozen=True)
class TrackingSettings:
    """Where the steps log their MLflow runs (docs/mlops.md): ``AQ_MLFLOW_*`` and MLflow's own
    ``MLFLOW_HTTP_REQUEST_*`` and credential variables. No URI: tracking is off."""

    uri: str | None = None
    experiment: str = "aq-forecast"
    model_name: str = "aq-forecast"
    # MLflow's own variables, with shorter defaults than its client's (120 s, 7 retries): a
    # step waits for a tracking server at most ~ timeout x (retries + 1), then queues the run
    timeout_s: float = 5.0
    max_retries: int = 1
    token: Secret = field(default_factory=lambda: Secret(""))
    username: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))

    @property
    def enabled(self) -> bool:
        return self.uri is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrackingSettings:
        from pipeline.redaction import register_secret

        env = os.environ if env is None else env
        d = cls()
        raw = (env.get("AQ_MLFLOW_TRACKING_URI") or "").strip()
        uri = None if raw.lower() in TRACKING_OFF else raw.rstrip("/")
        if uri is not None:
            parts = urlsplit(uri)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    f"environment variable AQ_MLFLOW_TRACKING_URI={raw!r} is not an http(s) URL "
                    "of an MLflow tracking server (or 'off')")
        settings = cls(
            uri=uri,
            experiment=env.get("AQ_MLFLOW_EXPERIMENT") or d.experiment,
            model_name=env.get("AQ_MLFLOW_MODEL_NAME") or d.model_name,
            timeout_s=_float(env, "MLFLOW_HTTP_REQUEST_TIMEOUT", d.timeout_s),
            max_retries=_count(env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES", d.max_retries),
            token=Secret(env.get("MLFLOW_TRACKING_TOKEN", "")),
            username=env.get("MLFLOW_TRACKING_USERNAME", ""),
            password=Secret(env.get("MLFLOW_TRACKING_PASSWORD", "")),
        )
        register_secret(settings.token)
        register_secret(settings.password)
        return settings


@dataclass(frozen=True)
class Settings:
    pushgateway_url: str | None = None
    metrics_job: str = "aq_pipeline"
    push_timeout_s: float = 2.0
    http_timeout_s: float = 20.0  # wall clock of one attempt: connect, headers, whole body
    http_total_s: float = 120.0  # every attempt and backoff wait of one request
    http_max_bytes: int = 64 * 1024 * 1024  # largest response body read
    openweathermap_api_key: Secret = field(default_factory=lambda: Secret(""))
    open_meteo_air_quality_url: str = "https://air-quality-api.open-meteo.com/v1/air-quality"
    open_meteo_forecast_url: str = "https://api.open-meteo.com/v1/forecast"
    open_meteo_archive_url: str = "https://archive-api.open-meteo.com/v1/archive"
    open_meteo_previous_runs_url: str = "https://previous-runs-api.open-meteo.com/v1/forecast"
    openweathermap_url: str = "https://api.openweathermap.org/data/2.5/air_pollution"
    # "plain": no timestamp on log lines (a task log that stamps each line itself)
    log_format: str = "timestamped"
    # one rate limit per provider for every process sharing this Redis (Celery workers);
    # unset: per process. The Airflow scale-out profile sets it (pipeline/ops/airflow_celery.py)
    rate_limit_redis_url: Secret = field(default_factory=lambda: Secret(""))
    # locations a step holds in memory at once (preprocess, evaluate, promote, predict):
    # memory per step grows with it, not with the number of locations; outputs do not change
    batch_locations: int = 25
    # worker processes a step may use for CPU-bound work: ingestion from a local source
    # (synthetic; a live provider always uses one, its rate limit being per process unless
    # shared in Redis) and preprocess's location batches; 1: everything in the step's process
    processes: int = field(default_factory=lambda: min(os.cpu_count() or 1, 8))
    # the Airflow scale-out profile (pipeline/ops/airflow_celery.py): Celery workers started on
    # this host, and task processes per worker
    celery_workers: int = 2
    celery_concurrency: int = 2

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from the environment; every secret read is registered for redaction."""
        from pipeline.redaction import register_secret

        env = os.environ if env is None else env
        defaults = cls()
        settings = cls(
            pushgateway_url=env.get("AQ_PUSHGATEWAY_URL") or None,
            metrics_job=env.get("AQ_METRICS_JOB") or defaults.metrics_job,
            push_timeout_s=_float(env, "AQ_PUSH_TIMEOUT_S", defaults.push_timeout_s),
            http_timeout_s=_float(env, "AQ_HTTP_TIMEOUT_S", defaults.http_timeout_s),
            http_total_s=_float(env, "AQ_HTTP_TOTAL_S", defaults.http_total_s),
            http_max_bytes=_int(env, "AQ_HTTP_MAX_BYTES", defaults.http_max_bytes),
            openweathermap_api_key=Secret(env.get("OPENWEATHERMAP_API_KEY", "")),
            open_meteo_air_quality_url=env.get("AQ_OPEN_METEO_AIR_QUALITY_URL")
            or defaults.open_meteo_air_quality_url,
            open_meteo_forecast_url=env.get("AQ_OPEN_METEO_FORECAST_URL")
            or defaults.open_meteo_forecast_url,
            open_meteo_archive_url=env.get("AQ_OPEN_METEO_ARCHIVE_URL")
            or defaults.open_meteo_archive_url,
            open_meteo_previous_runs_url=env.get("AQ_OPEN_METEO_PREVIOUS_RUNS_URL")
            or defaults.open_meteo_previous_runs_url,
            openweathermap_url=env.get("AQ_OPENWEATHERMAP_URL") or defaults.openweathermap_url,
            log_format="plain" if env.get("AQ_LOG_FORMAT") == "plain" else defaults.log_format,
            rate_limit_redis_url=Secret(env.get("AQ_RATE_LIMIT_REDIS_URL", "")),
            batch_locations=_int(env, "AQ_BATCH_LOCATIONS", defaults.batch_locations),
            processes=_int(env, "AQ_PROCESSES", defaults.processes),
            celery_workers=_int(env, "AQ_CELERY_WORKERS", defaults.celery_workers),
            celery_concurrency=_int(env, "AQ_CELERY_CONCURRENCY", defaults.celery_concurrency),
        )
        register_secret(settings.openweathermap_api_key)
        register_secret(settings.rate_limit_redis_url)
        register_secret(urlsplit(settings.rate_limit_redis_url.reveal()).password)
        return settings


def fault_point(name: str) -> None:
    """Crash-test hook: ``AQ_FAULT_KILL_AT=<name>`` SIGKILLs this process at that write point.

    The crash-safety tests kill real processes exactly between two writes (e.g. a model's
    artifact and its metadata) and check what the next run makes of it.
    """
    if os.environ.get("AQ_FAULT_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class ServingSettings:
    """The online endpoint's machine settings (``AQ_SERVING_*``); see docs/serving.md."""

    workers: int = 2
    max_body_bytes: int = 64 * 1024  # larger request bodies get 413
    stale_after_s: float = 3 * 3600.0  # batch forecasts older than this are flagged stale
    reload_interval_s: float = 2.0  # how often each worker checks the champion and the data
    slo_latency_s: float = 0.1  # latency SLO: 99% of /v1 requests faster than this
    slo_latency_target: float = 0.99
    slo_error_ratio: float = 0.001  # availability SLO: at most this share of /v1 answers 5xx
    timeout_s: float = 60.0  # gunicorn: a worker silent for longer (booting included) restarts

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingSettings:
        env = os.environ if env is None else env
        d = cls()
        target = _float(env, "AQ_SERVING_SLO_LATENCY_TARGET", d.slo_latency_target)
        error_ratio = _float(env, "AQ_SERVING_SLO_ERROR_RATIO", d.slo_error_ratio)
        for key, value in (("AQ_SERVING_SLO_LATENCY_TARGET", target),
                           ("AQ_SERVING_SLO_ERROR_RATIO", error_ratio)):
            if value >= 1:
                raise ValueError(f"environment variable {key}={value!r} must be below 1")
        return cls(
            workers=_int(env, "AQ_SERVING_WORKERS", d.workers),
            max_body_bytes=_int(env, "AQ_SERVING_MAX_BODY_BYTES", d.max_body_bytes),
            stale_after_s=_float(env, "AQ_SERVING_STALE_AFTER_S", d.stale_after_s),
            reload_interval_s=_float(env, "AQ_SERVING_RELOAD_INTERVAL_S", d.reload_interval_s),
            slo_latency_s=_float(env, "AQ_SERVING_SLO_LATENCY_S", d.slo_latency_s),
            slo_latency_target=target,
            slo_error_ratio=error_ratio,
            timeout_s=_float(env, "AQ_SERVING_TIMEOUT_S", d.timeout_s),
        )
