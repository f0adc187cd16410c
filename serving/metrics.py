"""The serving app's Prometheus metrics (documented in docs/metrics.md, "Serving metrics").

Under gunicorn every worker is a process: prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, set before the workers start, see ``serving/gunicorn_conf.py``)
writes each worker's values to files that ``/metrics`` merges, so counts are exact whichever
worker answers the scrape. Gauges say how they merge: ``livemax`` (any live worker),
``liveall`` (one series per live worker, label ``pid``).

HTTP request counts and latencies come from prometheus-flask-exporter
(``flask_http_request_duration_seconds`` by method, endpoint (:func:`endpoint`) and status;
``flask_http_request_total`` by method and status).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pipeline.core.aqi import CATEGORY_UPPER_AQI
from pipeline.core.keys import ModelKey

if TYPE_CHECKING:
    from flask import Blueprint, Flask

# latency buckets (s): fine below 50 ms where the service lives, and the latency SLO bound 0.1
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
# US AQI category upper bounds: each bucket of the histogram is one category
AQI_BUCKETS = tuple(float(x) for x in CATEGORY_UPPER_AQI)
COMPLETENESS_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
HOURS_BUCKETS = (0.0, 1.0, 2.0, 3.0, 6.0, 12.0, 24.0, 48.0, 168.0)
VALIDATION_REASONS = (
    "malformed_json", "unsupported_media_type", "body_too_large", "unknown_location",
    "missing_field", "unknown_field", "wrong_type", "out_of_range", "not_on_the_hour",
    "future_time", "duplicate_hour", "outside_window", "invalid_query", "insufficient_inputs",
    "other",
)

REGISTRY = CollectorRegistry(auto_describe=True)

PREDICTION_AQI = Histogram(
    "aq_serving_prediction_aqi", "Online forecasts by US AQI (one bucket per AQI category).",
    ["target", "horizon"], buckets=AQI_BUCKETS, registry=REGISTRY)
FEATURES_PRESENT = Histogram(
    "aq_serving_features_present_ratio",
    "Share of the model inputs known in an online forecast's feature row.",
    buckets=COMPLETENESS_BUCKETS, registry=REGISTRY)
HOURS_SINCE_OBSERVATION = Histogram(
    "aq_serving_hours_since_observation",
    "Hours from a target's newest observation to the online forecast's issue hour.",
    ["target"], buckets=HOURS_BUCKETS, registry=REGISTRY)
OBSERVATIONS = Counter(
    "aq_serving_observations", "Observations received in POST /v1/forecasts bodies.",
    registry=REGISTRY)
VALIDATION_FAILURES = Counter(
    "aq_serving_validation_failures", "Refused requests by reason (4xx answers).",
    ["reason"], registry=REGISTRY)
MODEL_INFO = Gauge(
    "aq_serving_model_info", "1 for the model version a live worker serves (0: no longer).",
    ["version"], multiprocess_mode="livemax", registry=REGISTRY)
MODEL_OUTDATED = Gauge(
    "aq_serving_model_outdated",
    "1 while a worker serves another version than models/champion.json names.",
    multiprocess_mode="livemax", registry=REGISTRY)
MODEL_RELOADS = Counter(
    "aq_serving_model_reloads", "Champion loads by result (success, failure).",
    ["result"], registry=REGISTRY)
MODEL_RELOAD_FAILURES = Counter(
    "aq_serving_model_reload_failures", "Champion loads refused, by reason.",
    ["reason"], registry=REGISTRY)
MODEL_RELOAD_FAILING = Gauge(
    "aq_serving_model_reload_failing",
    "1 while the champion named by models/champion.json cannot be loaded (the old one serves).",
    multiprocess_mode="livemax", registry=REGISTRY)
MODEL_LOADED_TIMESTAMP = Gauge(
    "aq_serving_model_loaded_timestamp_seconds", "Unix time the served model was loaded.",
    multiprocess_mode="livemax", registry=REGISTRY)
MODEL_SKLEARN_FALLBACK = Gauge(
    "aq_serving_model_sklearn_fallback",
    "1 when a target x horizon is served by scikit-learn because Treelite could not take it.",
    ["target", "horizon"], multiprocess_mode="livemax", registry=REGISTRY)
DATA_RELOADS = Counter(
    "aq_serving_data_reloads", "Reloads of batch forecasts and history, by result.",
    ["kind", "result"], registry=REGISTRY)
FORECAST_ISSUE_TIME = Gauge(
    "aq_serving_forecast_issue_timestamp_seconds",
    "Newest issue time of the batch forecasts served (predictions/latest.parquet).",
    multiprocess_mode="livemax", registry=REGISTRY)
HISTORY_NEWEST = Gauge(
    "aq_serving_history_newest_timestamp_seconds",
    "Newest observed hour in the in-memory history of any location.",
    multiprocess_mode="livemax", registry=REGISTRY)
WORKER_CPU = Gauge(
    "aq_serving_worker_cpu_seconds", "CPU time (user + system) a worker has used.",
    multiprocess_mode="liveall", registry=REGISTRY)
WORKER_MEMORY = Gauge(
    "aq_serving_worker_resident_memory_bytes", "Resident memory of a worker.",
    multiprocess_mode="liveall", registry=REGISTRY)

RELOAD_FAILURE_REASONS = ("pointer", "integrity", "registry", "incompatible")
# known label values start at 0, so every series exists (and rate() works) before it first moves
for _reason in VALIDATION_REASONS:
    VALIDATION_FAILURES.labels(reason=_reason)
for _reason in RELOAD_FAILURE_REASONS:
    MODEL_RELOAD_FAILURES.labels(reason=_reason)
for _result in ("success", "failure"):
    MODEL_RELOADS.labels(result=_result)
for _kind in ("forecasts", "history"):
    for _result in ("success", "failure"):
        DATA_RELOADS.labels(kind=_kind, result=_result)

_PAGE = os.sysconf("SC_PAGE_SIZE")


def record_worker_resources() -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    WORKER_CPU.set(usage.ru_utime + usage.ru_stime)
    try:
        with open("/proc/self/statm") as handle:
            WORKER_MEMORY.set(int(handle.read().split()[1]) * _PAGE)
    except OSError:
        pass


def set_served(version: str, previous: str | None, engines: Iterable[tuple[str, int, bool]],
               loaded_at: float) -> None:
    """The served version flips to 1 (the previous one to 0), with its engines."""
    if previous and previous != version:
        MODEL_INFO.labels(version=previous).set(0)
    MODEL_INFO.labels(version=version).set(1)
    for target, horizon, fallback in engines:
        MODEL_SKLEARN_FALLBACK.labels(**ModelKey.of(target, horizon).labels()).set(int(fallback))
    MODEL_LOADED_TIMESTAMP.set(loaded_at)


def multiprocess() -> bool:
    from pipeline.settings import ServingSettings

    return bool(ServingSettings.from_env().prometheus_multiproc_dir)


class _Forward:
    """Exposes this module's metrics through another registry (single-process mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self):
        return self._registry.collect()


def endpoint(request) -> str:
    """The ``endpoint`` label of the HTTP metrics: the view's name without its blueprint
    (``v1_forecasts_post``, ``healthz``), the values the rules and dashboards select."""
    return str(request.endpoint).rpartition(".")[2]


def blueprint(app: Flask) -> Blueprint:
    """HTTP metrics on ``app``, and a blueprint serving ``/metrics`` with this module's
    metrics (all workers' under gunicorn). Flask is imported here, not by the module: the
    metrics themselves are recorded by the V2 runtime too, whose venv has no Flask."""
    from flask import Blueprint
    options = {"group_by": endpoint, "buckets": LATENCY_BUCKETS, "path": None}
    if multiprocess():
        from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

        exporter = GunicornInternalPrometheusMetrics(app=None, **options)
    else:
        from prometheus_flask_exporter import PrometheusMetrics

        registry = CollectorRegistry(auto_describe=True)
        registry.register(_Forward(REGISTRY))
        exporter = PrometheusMetrics(app=None, registry=registry, **options)
    exporter.init_app(app)
    metrics = Blueprint("metrics", __name__)
    exporter.register_endpoint("/metrics", metrics)
    return metrics
