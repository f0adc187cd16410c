"""Is the online endpoint healthy? Requests, latency and errors against the SLOs, the budgets'
burn rates, the served model and its reloads, online forecasts and inputs, the workers, and the
last `make loadtest`."""

from __future__ import annotations

from grafana_foundation_sdk.models import units

from grafana.board import UP, Board, Query, thresholds, value_map
from grafana.parts import (
    PROMOTIONS,
    ROLLBACKS,
    alert_links,
    bar_options,
    board,
    series_options,
    series_style,
    stat_options,
)
from grafana.sources import burn_rates

# The SLOs over the /v1 endpoints: the defaults of AQ_SERVING_SLO_LATENCY_S,
# AQ_SERVING_SLO_LATENCY_TARGET and AQ_SERVING_SLO_ERROR_RATIO, which the rules' budgets use
# (tests/prometheus/test_serving_rules.py and test_grafana_files.py keep all three equal)
SLO_LATENCY_S = 0.1  # 99 % of requests within 100 ms
SLOW_BUDGET = 0.01  # 1 - the latency target: the share allowed slower
ERROR_BUDGET = 0.001  # the share of 5xx answers allowed
STALE_AFTER_S = 3 * 3600.0  # AQ_SERVING_STALE_AFTER_S's default: GET flags older batches stale
JOB = 'job="serving"'


def burn_thresholds(alert: str, budget: float) -> dict:
    """Orange at the ticket's burn rate, red at the page's (the alert rules' own factors)."""
    ticket, page = burn_rates(alert, budget)
    return thresholds("green", (ticket, "orange"), (page, "red"))


def build() -> Board:
    b = board("aq-serving", "Air quality: online forecasts (serving)",
              "The online forecast API: requests, latency and error budgets (SLOs), served "
              "model and reloads, forecast distribution, input completeness, workers (metrics: "
              "docs/metrics.md, alerts: docs/runbook.md, docs/serving.md).",
              annotations=(PROMOTIONS, ROLLBACKS), tags=("serving",), refresh="30s",
              time_from="now-6h")
    b.row("Requests")
    b.add("timeseries", "Request rate by status",
          [Query("sum by (status) (aq:serving_requests_by_status:rate5m)", "{{status}}")], w=6,
          unit=units.RequestsPerSecond, custom=series_style(), options=series_options(),
          description="Requests per second to the /v1 endpoints by HTTP status (4xx: refused "
                      "input; 5xx: errors that burn the budget).")
    b.add("timeseries", "Latency p50 / p95 / p99 against the SLO",
          [Query("aq:serving_latency_seconds:p50_5m", "p50"),
           Query("aq:serving_latency_seconds:p95_5m", "p95"),
           Query("aq:serving_latency_seconds:p99_5m", "p99"),
           Query(f"vector({SLO_LATENCY_S})", f"SLO (p99 {SLO_LATENCY_S * 1000:.0f} ms)")],
          w=6, unit=units.Seconds, min_value=0, custom=series_style(),
          options=series_options(), links=alert_links("ServingLatencyBudgetBurn"),
          description=f"Latency of the /v1 endpoints (5 min); the SLO is "
                      f"{1 - SLOW_BUDGET:.0%} within {SLO_LATENCY_S * 1000:.0f} ms "
                      "(ServingLatencyBudgetBurn).")
    b.add("timeseries", "5xx ratio",
          [Query("aq:serving_errors:ratio_rate5m", "5xx ratio (5 min)")], w=6,
          unit=units.PercentUnit, min_value=0, custom=series_style("line"),
          options=series_options(), thresholds=thresholds("green", (ERROR_BUDGET, "red")),
          links=alert_links("ServingErrorBudgetBurn"),
          description=f"Share of /v1 answers that are 5xx over 5 min; the line is the SLO "
                      f"({ERROR_BUDGET:.1%}).")
    b.add("timeseries", "Budget burn rates (1 h)",
          [Query(f"aq:serving_errors:ratio_rate1h / {ERROR_BUDGET}", "error budget burn"),
           Query(f"aq:serving_slow:ratio_rate1h / {SLOW_BUDGET}", "latency budget burn")],
          w=6, unit=units.Number, min_value=0, custom=series_style("line"),
          options=series_options(),
          thresholds=burn_thresholds("ServingErrorBudgetBurn", ERROR_BUDGET),
          links=alert_links("ServingErrorBudgetBurn"),
          description="How many times faster than the SLO allows each budget burns over 1 h: "
                      "1 spends the 30-day budget in 30 days; the alerts ticket at the orange "
                      "line (6h window) and page at the red one (1h window).")
    b.add("bargauge", "Refused requests by reason (1 h)",
          [Query(f"sum by (reason) (increase(aq_serving_validation_failures_total{{{JOB}}}"
                 "[1h]))", "{{reason}}")], w=8, options=bar_options(),
          description="4xx answers by validation reason: what callers get wrong.")
    b.add("stat", "Serving up", [Query(f"up{{{JOB}}}", "{{instance}}")], w=4, mappings=UP,
          thresholds=thresholds("red", (1, "green")), options=stat_options("value"),
          alert="ServingDown", links=alert_links("ServingDown"),
          description="1 = Prometheus scrapes the serving app (ServingDown after 2 min at 0).")
    b.add("stat", "Batch forecast age",
          [Query(f"time() - max(aq_serving_forecast_issue_timestamp_seconds{{{JOB}}})", "age")],
          w=4, unit=units.Seconds, options=stat_options("value"),
          thresholds=thresholds("green", (STALE_AFTER_S - 3600, "orange"),
                                (STALE_AFTER_S, "red")),
          description="Now minus the newest issue time of the batch forecasts served "
                      "(GET /v1/forecasts flags older than AQ_SERVING_STALE_AFTER_S, red, as "
                      "stale).")
    b.add("stat", "Served model version",
          [Query(f"max by (version) (aq_serving_model_info{{{JOB}}} == 1)", "served {{version}}"),
           Query("aq:champion_info", "champion {{version}}")], w=8,
          options=stat_options("name", "none"),
          description="The version each live worker serves (1) and the champion the pipeline "
                      "pushed; they differ: ServingModelOutdated.")

    b.row("Front door (nginx)")
    b.add("timeseries", "Answers of the front door by origin and status",
          [Query('sum by (origin, status) (rate(aq_serving_proxy_responses_total'
                 '{job="serving_proxy",api="v1"}[5m]))', "{{origin}} {{status}}")], w=24,
          unit=units.RequestsPerSecond, custom=series_style(), options=series_options(),
          links=alert_links("ServingErrorBudgetBurn"),
          description="Every /v1 answer nginx gave (job serving_proxy, mtail over its access "
                      "log): origin app = the app's answer passed on; origin proxy = nginx "
                      "alone: 408 (a client too slow or lying about its length), 413 (body too "
                      "large), 429 (too many requests at once from one address), 502/504 (no "
                      "worker answered: counted against the error budget).")

    b.row("Model")
    b.add("timeseries", "Model reloads",
          [Query(f"sum by (result) (increase(aq_serving_model_reloads_total{{{JOB}}}[1h]))",
                 "{{result}}")], w=12, custom=series_style(), options=series_options(),
          description="Champion loads per hour by result; failures keep the old model serving "
                      "(ServingModelReloadFailing).")
    b.add("stat", "Reload failing / outdated / scikit-learn fallback",
          [Query(f"max(aq_serving_model_reload_failing{{{JOB}}})", "reload failing"),
           Query(f"max(aq_serving_model_outdated{{{JOB}}})", "outdated"),
           Query(f"max(aq_serving_model_sklearn_fallback{{{JOB}}})", "sklearn fallback")],
          w=12, mappings=value_map(("0", "no", "green"), ("1", "yes", "red")),
          thresholds=thresholds("green", (1, "red")), options=stat_options(),
          alert="ServingModelReloadFailing",
          links=[*alert_links("ServingModelReloadFailing"),
                 *alert_links("ServingModelOutdated")[:1]],
          description="yes = the new champion cannot be loaded; yes = a worker serves another "
                      "version than champion.json; yes = a model is served by scikit-learn "
                      "(Treelite could not take it).")

    b.row("Forecasts")
    b.add("bargauge", "Online forecasts by AQI category (1 h)",
          [Query(f"sum by (le) (increase(aq_serving_prediction_aqi_bucket{{{JOB}}}[1h]))",
                 "AQI <= {{le}}")], w=8, options=bar_options(),
          description="POST /v1/forecasts predictions per US AQI category bucket (upper AQI 50 "
                      "good, 100 moderate, 150 USG, 200 unhealthy, 300 very unhealthy, 500 "
                      "hazardous).")
    b.add("timeseries", "Input completeness of online requests",
          [Query("histogram_quantile(0.5, sum by (le) (rate("
                 f"aq_serving_features_present_ratio_bucket{{{JOB}}}[5m])))",
                 "features present (median)"),
           Query("histogram_quantile(0.5, sum by (le, target) (rate("
                 f"aq_serving_hours_since_observation_bucket{{{JOB}}}[5m])))",
                 "hours since observation {{target}} (median)")], w=8,
          custom=series_style(), options=series_options(),
          description="Median share of the model inputs known, and median hours since the "
                      "target's newest observation.")
    b.add("timeseries", "Observations received",
          [Query(f"rate(aq_serving_observations_total{{{JOB}}}[5m])", "observations/s")], w=8,
          custom=series_style(), options=series_options(),
          description="Hourly observations per second sent in POST /v1/forecasts bodies.")

    b.row("Workers")
    b.add("timeseries", "Worker CPU",
          [Query(f"rate(aq_serving_worker_cpu_seconds{{{JOB}}}[5m])", "worker {{pid}}")], w=12,
          unit=units.PercentUnit, custom=series_style(), options=series_options(),
          description="CPU cores used by each gunicorn worker (pid).")
    b.add("timeseries", "Worker memory",
          [Query(f"aq_serving_worker_resident_memory_bytes{{{JOB}}}", "worker {{pid}}")],
          w=12, unit=units.BytesIEC, custom=series_style(), options=series_options(),
          description="Resident memory of each gunicorn worker (flat under steady load).")

    b.row("Load test (make loadtest, last run)")
    b.add("stat", "Throughput", [Query("aq_loadtest_requests_per_second", "req/s")], w=8,
          unit=units.RequestsPerSecond, options=stat_options("value", "none"),
          description="Requests per second the last `make loadtest` run sustained (pushed as "
                      "job aq_loadtest).")
    b.add("stat", "p99 latency",
          [Query('aq_loadtest_latency_seconds{quantile="0.99"}', "p99")], w=8,
          unit=units.Seconds, thresholds=thresholds("green", (SLO_LATENCY_S, "red")),
          options=stat_options("value"),
          description="The last run's p99 latency; red above the SLO bound the gate checks.")
    b.add("stat", "SLO gate", [Query("aq_loadtest_slo_passed", "gate")], w=8,
          mappings=value_map(("1", "passed", "green"), ("0", "failed", "red")),
          options=stat_options("value"),
          description="Did the last run pass the SLO gate (p99 and failure ratio within the "
                      "SLOs)? `make loadtest` exits 1 when it did not.")
    return b
