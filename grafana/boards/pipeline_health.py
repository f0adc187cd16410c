"""Is the pipeline running, fresh and sane? Steps, ingestion, a summary of model, drift
and forecasts (details on their own dashboards) and the machine."""

from __future__ import annotations

from grafana_foundation_sdk.models import units

from grafana.board import OUTCOME, UP, Board, Query, link, thresholds, value_map
from grafana.parts import (
    FAILED_STEPS,
    MERGE,
    PROMOTIONS,
    REFUSALS,
    ROLLBACKS,
    alert_links,
    bar_options,
    board,
    goto,
    organize,
    query_variable,
    series_options,
    series_style,
    stat_options,
    table_options,
)
from grafana.sources import (
    alert_thresholds,
    aqi_steps,
    drift_params,
)


def build() -> Board:
    b = board("aq-pipeline-health", "Air quality: pipeline health",
              "Is the pipeline running, fresh and sane? Steps, ingestion, a summary of model, "
              "drift and forecasts (details on their own dashboards) and the machine.",
              query_variable("step", "Step", "aq_step_success",
                             description="Pipeline steps (and Airflow task ids of failures "
                                         "around a step)"),
              query_variable("location", "Location", "aq_ingest_location_success"),
              annotations=(FAILED_STEPS, PROMOTIONS, ROLLBACKS, REFUSALS))
    no_rows = {"step": ("promote", "rollback")}
    not_validating = {"step": ("train", "evaluate", "promote", "predict", "score", "drift",
                               "rollback", "backtest")}  # only ingest, backfill, preprocess refuse
    b.row("Pipeline steps")
    b.add("stat", "Step outcome (last run)",
          [Query('aq_step_success{step=~"$step"}', "{{step}}")], w=8,
          description="1 if the step's last run succeeded, 0 if it failed (it pushed its "
                      "failure before the error propagated).",
          mappings=OUTCOME, thresholds=thresholds("red", (1, "green")),
          options=stat_options(), alert="PipelineStepFailing",
          links=alert_links("PipelineStepFailing"))
    b.add("bargauge", "Staleness budget used",
          [Query('aq:step_seconds_since_success{step=~"$step"} / on (step) group_left () '
                 "aq:step_stale_after_seconds", "{{step}}",
                 empty_ok={"step": ("rollback", "backfill", "backtest")})],
          w=8, unit=units.PercentUnit, min_value=0, max_value=1.5,
          description="Time since the last success over the step's staleness limit "
                      "(1.5 x its schedule + 15 min): PipelineStepStale fires at 100 %.",
          hint="Steps run by hand (backfill, rollback, backtest) have no schedule, so no budget.",
          thresholds=thresholds("green", (0.75, "orange"), (1.0, "red")),
          options=bar_options(), alert="PipelineStepStale", links=alert_links("PipelineStepStale"))
    b.add("stat", "Firing alerts", [Query('count(ALERTS{alertstate="firing"}) or vector(0)',
                                          "firing")], w=8,
          description="Alerts firing now in Prometheus; the list and their runbooks are linked.",
          thresholds=thresholds("green", (1, "red")), options=stat_options("value"),
          links=[link("Alerts (Prometheus)", "${prometheus_url}/classic/alerts", blank=True),
                 link("Runbook", "${runbook_url}", blank=True)])
    b.add("timeseries", "Time since last success",
          [Query('aq:step_seconds_since_success{step=~"$step"}', "{{step}}")], w=8,
          unit=units.Seconds, custom=series_style(), options=series_options(),
          description="Grows between runs; drops to zero when the step succeeds again.")
    b.add("timeseries", "Step duration",
          [Query('aq_step_duration_seconds{step=~"$step"}', "{{step}}")], w=8,
          unit=units.Seconds, custom=series_style(), options=series_options(),
          description="Wall time of each step's last run.")
    b.add("table", "Rows in / out / quarantined",
          [Query('aq_step_rows_in{step=~"$step"}', instant=True, table=True, empty_ok=no_rows),
           Query('aq_step_rows_out{step=~"$step"}', instant=True, table=True, empty_ok=no_rows),
           Query('aq_step_rows_quarantined{step=~"$step"}', instant=True, table=True,
                 empty_ok=not_validating)],
          w=8, description="Rows each step's last run read, wrote and refused (quarantined "
                           "with a reason), one row per step.",
          hint="promote and rollback read and write no rows; only ingest, backfill and "
               "preprocess validate (and quarantine) rows.",
          transformations=[MERGE, organize({"Value #A": "in", "Value #B": "out",
                                            "Value #C": "quarantined"}, ("Time", "job",
                                                                         "instance"))],
          options=table_options("step"))

    b.row("Ingestion")
    b.add("timeseries", "Data freshness lag",
          [Query('aq_ingest_freshness_lag_seconds{location=~"$location"}', "{{location}}")],
          w=8, unit=units.Seconds, custom=series_style("line"), options=series_options(),
          thresholds=alert_thresholds("IngestionFreshnessLag"), alert="IngestionFreshnessLag",
          links=alert_links("IngestionFreshnessLag"),
          description="Now minus the newest stored observation of each location, at the last "
                      "ingestion; the line is IngestionFreshnessLag's threshold.")
    b.add("timeseries", "Quarantine ratio",
          [Query('aq:step_quarantine_ratio{step=~"$step"}', "{{step}}",
                 empty_ok=not_validating)],
          w=8, unit=units.PercentUnit, custom=series_style("line"), options=series_options(),
          thresholds=alert_thresholds("QuarantineRatioHigh"), alert="QuarantineRatioHigh",
          links=alert_links("QuarantineRatioHigh"),
          hint="Only ingest, backfill and preprocess validate rows.",
          description="Rows refused / rows read in each validating step's last run.")
    b.add("stat", "Locations ingested",
          [Query('aq_ingest_location_success{location=~"$location"}', "{{location}}")], w=8,
          mappings=value_map(("1", "ok", "green"), ("0", "failed", "red")),
          thresholds=thresholds("red", (1, "green")), options=stat_options(),
          description="1 if the location was fetched and stored by the last ingestion.")
    b.add("bargauge", "Null fraction by variable",
          [Query("aq_ingest_null_fraction", "{{variable}}", instant=True)], w=8,
          unit=units.PercentUnit, min_value=0, max_value=1,
          thresholds=thresholds("green", (0.2, "orange"), (0.5, "red")), options=bar_options(),
          description="Share of missing values per variable in the last ingestion "
                      "(a source without a variable shows 100 %).")
    http_hint = "No HTTP requests in the last ingestion: the synthetic and CSV sources make none."
    b.add("table", "HTTP responses by provider and code",
          [Query("sum by (provider, code) (aq_ingest_http_responses)", instant=True,
                 table=True)], w=8, hint=http_hint, options=table_options("provider"),
          transformations=[organize({"Value": "responses"})],
          description="Responses of the last ingestion by provider and status code "
                      "(429 and 5xx are retried).")
    b.add("timeseries", "Mean request latency",
          [Query("aq_ingest_request_latency_seconds", "{{provider}}")], w=8, hint=http_hint,
          unit=units.Seconds, custom=series_style(), options=series_options(),
          description="Mean latency of the last ingestion's requests per provider.")

    b.row("Model, drift and forecasts (details on their dashboards)")
    b.add("stat", "Worst holdout skill by target",
          [Query("aq:model_skill:min_by_target", "{{target}}")], w=5, unit=units.PercentUnit,
          thresholds=alert_thresholds("ModelSkillBelowPersistence"), options=stat_options(),
          alert="ModelSkillBelowPersistence",
          links=[goto("aq-model-quality", "Model quality"),
                 *alert_links("ModelSkillBelowPersistence")],
          description="The candidate's worst horizon: 1 - MAE / MAE of persistence on the "
                      "holdout; below 0 persistence wins and the gate refuses it.")
    b.add("stat", "Worst realised skill by target",
          [Query("aq:realised_skill:min_by_target", "{{target}}")], w=5, unit=units.PercentUnit,
          thresholds=alert_thresholds("RealisedAccuracyDegraded"), options=stat_options(),
          alert="RealisedAccuracyDegraded",
          hint="No forecast has matured yet: realised skill needs the observed hours the "
               "forecasts were for.",
          links=[goto("aq-model-quality", "Model quality"),
                 *alert_links("RealisedAccuracyDegraded")],
          description="Issued forecasts scored against what was then observed (worst horizon).")
    b.add("stat", "Champion age", [Query("aq:champion_age_seconds", "champion")], w=4,
          unit=units.DurationSeconds, thresholds=alert_thresholds("ChampionNotRefreshed"),
          options=stat_options("value"), alert="ChampionNotRefreshed",
          links=[goto("aq-model-quality", "Model quality"),
                 *alert_links("ChampionNotRefreshed")],
          description="Since the current champion was trained; ChampionNotRefreshed at 7 days.")
    b.add("stat", "Share of drifted features", [Query("aq_drift_share", "drifted")], w=4,
          unit=units.PercentUnit,
          thresholds=thresholds("green", (drift_params()["share_threshold"], "red")),
          options=stat_options("value"), alert="DriftDetected",
          links=[goto("aq-drift", "Drift"), *alert_links("DriftDetected")],
          description="Features whose PSI exceeds drift.psi_threshold; DriftDetected above "
                      "drift.share_threshold (params.yaml).")
    b.add("bargauge", "Forecast max US AQI, next 24 h",
          [Query('aq_forecast_max_aqi_24h{location=~"$location"}', "{{location}} {{target}}",
                 instant=True)], w=6, min_value=0, max_value=500, thresholds=aqi_steps(),
          options=bar_options(), alert="ForecastAQIUnhealthy",
          links=[goto("aq-forecasts", "Forecasts"), *alert_links("ForecastAQIUnhealthy")],
          description="Highest forecast AQI within 24 h per location, in EPA category colours; "
                      "ForecastAQIUnhealthy fires above 150 (Unhealthy).")

    b.row("Infrastructure")
    b.add("stat", "Targets up", [Query("up", "{{job}}")], w=8, mappings=UP,
          thresholds=thresholds("red", (1, "green")), options=stat_options(),
          alert="TargetDown", links=alert_links("TargetDown"),
          description="1 if Prometheus scraped the target last time (serving and Airflow are "
                      "down when not started).")
    b.add("bargauge", "Disk space available",
          [Query('node_filesystem_avail_bytes{fstype!~"tmpfs|ramfs|squashfs|overlay"} '
                 "/ node_filesystem_size_bytes", "{{mountpoint}}", instant=True)], w=8,
          unit=units.PercentUnit, min_value=0, max_value=1,
          thresholds=alert_thresholds("DiskFilling"), options=bar_options(),
          alert="DiskFilling", links=alert_links("DiskFilling"),
          description="Free space per filesystem; DiskFilling under 10 % (or 25 % and filling).")
    b.add("timeseries", "Memory available",
          [Query("node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes", "available")],
          w=8, unit=units.PercentUnit, min_value=0, max_value=1, custom=series_style("line"),
          options=series_options(), thresholds=alert_thresholds("MemoryPressure"),
          alert="MemoryPressure", links=alert_links("MemoryPressure"),
          description="Memory available for new work; MemoryPressure under 10 % for 10 min.")
    return b
