"""Push each step's metrics to the Prometheus Pushgateway.

One fresh ``CollectorRegistry`` per push and ``pushadd`` (not ``push``), so a
step only replaces the metric families it sends and keeps e.g. its
last-failure time when it later succeeds. The grouping key is ``job`` plus
``step``: bounded, never a run id or a timestamp. Without a Pushgateway URL the
reporter only logs at debug; with the Pushgateway down the step still succeeds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge, Info
from prometheus_client.exposition import pushadd_to_gateway

from pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricSpec:
    kind: str  # "gauge" | "info"
    help: str
    labels: tuple[str, ...] = ()
    # why the series may be absent after a full pipeline run (empty: always emitted)
    optional: str = ""


# The catalogue: docs/metrics.md documents exactly these (a test keeps them in step).
CATALOGUE: dict[str, MetricSpec] = {
    # every step
    "aq_step_duration_seconds": MetricSpec("gauge", "Wall time of the step's last run."),
    "aq_step_success": MetricSpec("gauge", "1 if the step's last run succeeded, 0 if it failed."),
    "aq_step_last_success_timestamp_seconds": MetricSpec(
        "gauge", "Unix time the step last succeeded."
    ),
    "aq_step_last_failure_timestamp_seconds": MetricSpec(
        "gauge", "Unix time the step last failed."
    ),
    "aq_step_rows_in": MetricSpec("gauge", "Rows the step's last run read."),
    "aq_step_rows_out": MetricSpec("gauge", "Rows the step's last run wrote."),
    "aq_step_rows_quarantined": MetricSpec(
        "gauge", "Rows the step's last run refused and kept in quarantine."
    ),
    # ingestion quality
    "aq_ingest_rows": MetricSpec("gauge", "Rows ingested in the last run.", ("location",)),
    "aq_ingest_freshness_lag_seconds": MetricSpec(
        "gauge", "Now minus the newest stored observation.", ("location",)
    ),
    "aq_ingest_null_fraction": MetricSpec(
        "gauge", "Share of null values per variable in the last run.", ("variable",)
    ),
    "aq_ingest_location_success": MetricSpec(
        "gauge", "1 if the location was ingested in the last run, 0 if it failed.", ("location",)
    ),
    "aq_ingest_http_responses": MetricSpec(
        "gauge", "HTTP responses in the last run by provider and status code.", ("provider", "code")
    ),
    "aq_ingest_request_latency_seconds": MetricSpec(
        "gauge", "Mean request latency per provider in the last run.", ("provider",)
    ),
    "aq_ingest_requests": MetricSpec("gauge", "Requests made in the last run.", ("provider",)),
    # model quality on the holdout
    "aq_model_mae": MetricSpec("gauge", "Holdout MAE of the candidate.", ("target", "horizon")),
    "aq_model_rmse": MetricSpec("gauge", "Holdout RMSE of the candidate.", ("target", "horizon")),
    "aq_model_r2": MetricSpec("gauge", "Holdout R^2 of the candidate.", ("target", "horizon")),
    "aq_model_skill": MetricSpec(
        "gauge", "1 - MAE/MAE_persistence on the holdout.", ("target", "horizon")
    ),
    "aq_model_persistence_mae": MetricSpec(
        "gauge", "Holdout MAE of the persistence baseline.", ("target", "horizon")
    ),
    "aq_model_aqi_category_accuracy": MetricSpec(
        "gauge", "Share of holdout hours whose AQI category is right.", ("target", "horizon")
    ),
    # rolling-origin backtest
    "aq_backtest_mae": MetricSpec(
        "gauge", "Backtest MAE of the last backtest run.", ("target", "horizon")
    ),
    "aq_backtest_skill": MetricSpec(
        "gauge", "Backtest 1 - MAE/MAE_persistence of the last backtest run.",
        ("target", "horizon")
    ),
    "aq_backtest_interval_coverage": MetricSpec(
        "gauge", "Share of backtest forecasts inside their 80 % interval.", ("target", "horizon")
    ),
    # promotion and champion
    "aq_promotion_promoted": MetricSpec(
        "gauge", "1 if the last candidate was promoted, 0 if the gate refused it."
    ),
    "aq_promotion_refused_timestamp_seconds": MetricSpec(
        "gauge", "Unix time the promotion gate last refused a candidate.",
        optional="only once a candidate has been refused",
    ),
    "aq_champion_info": MetricSpec("info", "The current champion model.", ("version",)),
    "aq_champion_created_timestamp_seconds": MetricSpec(
        "gauge", "Unix time the current champion was trained."
    ),
    "aq_champion_switched_timestamp_seconds": MetricSpec(
        "gauge", "Unix time the champion pointer last changed, by the step that changed it.",
        ("action",),
    ),
    "aq_model_interval_coverage": MetricSpec(
        "gauge", "Share of holdout observations inside the candidate's 80 % interval.",
        ("target", "horizon"), optional="only for models with prediction intervals",
    ),
    # realised accuracy of past forecasts
    "aq_realised_mae": MetricSpec(
        "gauge", "MAE of past batch forecasts against later observations.", ("target", "horizon")
    ),
    "aq_realised_skill": MetricSpec(
        "gauge", "1 - MAE/MAE_persistence of past forecasts.", ("target", "horizon")
    ),
    "aq_realised_forecasts_scored": MetricSpec(
        "gauge", "Forecasts scored against observations.", ("target", "horizon")
    ),
    "aq_realised_interval_coverage": MetricSpec(
        "gauge", "Share of later observations inside the issued forecasts' 80 % interval.",
        ("target", "horizon"), optional="only for forecasts with prediction intervals",
    ),
    # drift
    "aq_drift_psi": MetricSpec(
        "gauge", "PSI of a feature: recent window vs the champion's training data.", ("feature",)
    ),
    "aq_drift_share": MetricSpec("gauge", "Share of features whose PSI exceeds the threshold."),
    "aq_drift_detected": MetricSpec("gauge", "1 if drift exceeds the share threshold."),
    "aq_drift_reference_info": MetricSpec(
        "info", "The training months the recent window was compared with (same season).",
        ("months", "seasonal"),
    ),
    "aq_drift_period_start_timestamp_seconds": MetricSpec(
        "gauge", "Start of a compared period: the champion's training rows (training) or "
        "the recent window (recent).", ("period",),
    ),
    "aq_drift_period_end_timestamp_seconds": MetricSpec(
        "gauge", "End (newest hour) of the compared period.", ("period",),
    ),
    # forecasts
    "aq_forecast_max_aqi_24h": MetricSpec(
        "gauge", "Highest forecast US AQI within the next 24 h.", ("location", "target")
    ),
    "aq_forecast_rows": MetricSpec("gauge", "Forecast rows written by the last batch."),
    "aq_forecast_input_completeness": MetricSpec(
        "gauge", "Share of the champion's features present in a location's latest row.",
        ("location",)
    ),
    "aq_forecast_hours_since_observation": MetricSpec(
        "gauge", "Hours between a target's last observation and the forecast's issue time.",
        ("location", "target")
    ),
    "aq_forecast_degraded": MetricSpec(
        "gauge", "1 if the location got no forecast in the last batch (inputs too incomplete).",
        ("location",),
    ),
    "aq_forecast_value": MetricSpec(
        "gauge", "The last batch's forecast concentration (ug/m3).",
        ("location", "target", "horizon"),
    ),
    "aq_forecast_lower": MetricSpec(
        "gauge", "Lower bound of the last batch's 80 % prediction interval (ug/m3).",
        ("location", "target", "horizon"), optional="only for models with prediction intervals",
    ),
    "aq_forecast_upper": MetricSpec(
        "gauge", "Upper bound of the last batch's 80 % prediction interval (ug/m3).",
        ("location", "target", "horizon"), optional="only for models with prediction intervals",
    ),
    "aq_forecast_issue_timestamp_seconds": MetricSpec(
        "gauge", "Unix time of the hour the last batch forecast from (its newest input).",
        ("location",),
    ),
    # observations (what the forecasts are compared with)
    "aq_observation_value": MetricSpec(
        "gauge", "Newest stored observation of each target (ug/m3).", ("location", "target")
    ),
    "aq_observation_timestamp_seconds": MetricSpec(
        "gauge", "Unix time of the hour of that observation.", ("location", "target")
    ),
    "aq_forecast_exceedance_probability_24h": MetricSpec(
        "gauge", "Probability that some forecast hour of the next 24 h reaches the AQI category "
        "(largest over the horizons).", ("location", "target", "category")
    ),
}


@dataclass
class StepRun:
    """Collects one step run's metrics; pushed once when the step ends."""

    step: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    started: float = field(default_factory=time.time)  # Unix time (the MLflow run's start)
    _gauges: dict[str, Gauge | Info] = field(default_factory=dict)

    def _family(self, name: str) -> Gauge | Info:
        if name not in CATALOGUE:
            raise KeyError(f"metric {name!r} is not in the catalogue (pipeline/io/metrics.py)")
        if name not in self._gauges:
            spec = CATALOGUE[name]
            if spec.kind == "info":
                # an info metric's labels are its values, set by info(), not label names
                self._gauges[name] = Info(
                    name.removesuffix("_info"), spec.help, registry=self.registry
                )
            else:
                self._gauges[name] = Gauge(name, spec.help, spec.labels, registry=self.registry)
        return self._gauges[name]

    def set(self, name: str, value: float, **labels: str | int) -> None:
        family = self._family(name)
        assert isinstance(family, Gauge), f"{name} is not a gauge"
        if labels:
            family.labels(**{k: str(v) for k, v in labels.items()}).set(value)
        else:
            family.set(value)

    def info(self, name: str, values: Mapping[str, str]) -> None:
        family = self._family(name)
        assert isinstance(family, Info), f"{name} is not an info metric"
        family.info({k: str(v) for k, v in values.items()})

    def rows(self, rows_in: int | None = None, rows_out: int | None = None,
             quarantined: int | None = None) -> None:
        if rows_in is not None:
            self.set("aq_step_rows_in", rows_in)
        if rows_out is not None:
            self.set("aq_step_rows_out", rows_out)
        if quarantined is not None:
            self.set("aq_step_rows_quarantined", quarantined)


class MetricsReporter:
    def __init__(self, settings: Settings | None = None, *, retries: int = 2,
                 backoff_s: float = 0.5) -> None:
        settings = settings or Settings.from_env()
        self.url = settings.pushgateway_url
        self.job = settings.metrics_job
        self.timeout = settings.push_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s

    def push(self, run: StepRun) -> bool:
        """Push a step's registry; True on success. Never raises for an unreachable gateway."""
        if not self.url:
            log.debug("no AQ_PUSHGATEWAY_URL: metrics of step %s not pushed", run.step)
            return False
        last_error: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                pushadd_to_gateway(
                    self.url,
                    job=self.job,
                    grouping_key={"step": run.step},
                    registry=run.registry,
                    timeout=self.timeout,
                )
                return True
            except Exception as exc:  # URLError, timeouts, HTTP errors from the gateway
                last_error = exc
                if attempt < self.retries:
                    time.sleep(self.backoff_s * (2**attempt))
        log.warning("could not push metrics of step %s to %s: %s", run.step, self.url, last_error)
        return False

    @contextmanager
    def step(self, step: str) -> Iterator[StepRun]:
        """Time a step and push its outcome; a failure is pushed before it propagates."""
        run = StepRun(step)
        started = time.time()
        try:
            yield run
        except BaseException:
            now = time.time()
            run.set("aq_step_duration_seconds", now - started)
            run.set("aq_step_success", 0)
            run.set("aq_step_last_failure_timestamp_seconds", now)
            self.push(run)
            raise
        now = time.time()
        run.set("aq_step_duration_seconds", now - started)
        run.set("aq_step_success", 1)
        run.set("aq_step_last_success_timestamp_seconds", now)
        self.push(run)
