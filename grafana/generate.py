"""The dashboards as code: ``.venv/bin/python -m grafana.generate`` writes grafana/dashboards/.

One dashboard per question, cross-linked (tag ``aq``): pipeline health, model quality,
forecasts, drift and Airflow. A panel tied to an alert links to the alert's own
``runbook_url`` (the runbook page the local stack serves, ``Ports.runbook_base()``).
``serving.json`` is written by hand by the serving work (issue 14): tag it ``aq`` and it
joins the navigation.

Thresholds come from their one source: the alert rules (prometheus/rules/*.yml),
params.yaml (drift, forecast inputs) and pipeline/core/aqi.py (AQI categories); the
layout pictures in docs/monitoring.md are drawn from the generated JSON. Every dashboard
goes through the typed models of grafana-foundation-sdk (Grafana 10.4, the docker-compose
image) and generation fails if they would drop anything. ``--check`` compares instead of writing.
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import units
from grafana_foundation_sdk.models.dashboard import Dashboard

from grafana.board import (
    DATASOURCE,
    OUTCOME,
    UP,
    Board,
    Json,
    PanelMeta,
    Query,
    link,
    thresholds,
    value_map,
)
from pipeline.core.aqi import aqi, category_thresholds
from pipeline.settings import Ports

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "grafana" / "dashboards"
RULES = REPO / "prometheus" / "rules"
MONITORING_DOC = REPO / "docs" / "monitoring.md"
PARAMS = REPO / "params.yaml"

TAG = "aq"
PORTS = Ports()  # the default addresses: local stack and docker-compose (network_mode: host)
PROVISIONED_DATASOURCE = "prometheus"  # uid in grafana/provisioning/datasources/prometheus.yml
SERVING_FILE = "serving.json"  # by the serving work (issue 14); checked by its own tests
POLLUTANTS = ("pm2_5", "pm10", "no2", "o3", "so2", "co")  # the ones with AQI breakpoints
AQI_COLORS = ("green", "yellow", "orange", "red", "purple", "#7E0023")  # EPA category colours

# ---------------------------------------------------------------- the sources of truth


@cache
def alert_rules() -> dict[str, dict]:
    """Every alert of prometheus/rules/*.yml by name."""
    return {r["alert"]: r for path in sorted(RULES.glob("*.yml"))
            for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]
            if "alert" in r}


_COMPARISON = re.compile(r"(>=|<=|==|!=|>|<)\s*(?:bool\s+)?(\d[\d.]*(?:\s*[*/]\s*\d[\d.]*)*)")
_OPS = {ast.Mult: operator.mul, ast.Div: operator.truediv}


def _number(text: str) -> float:
    """A product/quotient of numbers such as ``3 * 3600`` (nothing else is evaluated)."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"not a constant expression: {text!r}")

    return walk(ast.parse(text.strip(), mode="eval").body)


def rule_threshold(alert: str, index: int = 0) -> tuple[str, float]:
    """(comparison, constant) of the ``index``-th comparison with a constant in the alert."""
    expr = alert_rules()[alert]["expr"]
    found = _COMPARISON.findall(expr)
    if len(found) <= index:
        raise ValueError(f"alert {alert} has no comparison #{index} with a constant: {expr}")
    op, text = found[index]
    return op, _number(text)


def alert_thresholds(alert: str, index: int = 0, ok: str = "green", bad: str = "red") -> Json:
    """Colours that change where the alert fires: bad above for ``>``, below for ``<``."""
    op, value = rule_threshold(alert, index)
    if op in (">", ">="):
        return thresholds(ok, (value, bad))
    if op in ("<", "<="):
        return thresholds(bad, (value, ok))
    raise ValueError(f"alert {alert}: {op} {value} is a state, use a value mapping")


@cache
def params() -> dict:
    return yaml.safe_load(PARAMS.read_text())


def drift_params() -> dict:
    return params()["drift"]


def aqi_steps() -> Json:
    """US AQI category bands (the index is the same for every pollutant)."""
    starts = aqi("pm2_5", list(category_thresholds("pm2_5").values()))
    return thresholds(AQI_COLORS[0], *zip(map(float, starts), AQI_COLORS[1:], strict=True))


def concentration_overrides(pattern: str) -> list[Json]:
    """AQI category bands in ug/m3 for each pollutant, for fields named ``pattern % target``."""
    out = []
    for target in POLLUTANTS:
        starts = category_thresholds(target).values()
        out.append({"matcher": {"id": "byRegexp", "options": pattern % target},
                    "properties": [{"id": "thresholds", "value": thresholds(
                        AQI_COLORS[0], *zip((round(s, 1) for s in starts), AQI_COLORS[1:],
                                            strict=True))}]})
    return out


def runbook_url(alert: str) -> str:
    """The alert's own ``runbook_url`` (prometheus/rules), on the ``runbook_url`` constant."""
    url = alert_rules()[alert]["annotations"]["runbook_url"]
    base, _, anchor = url.partition("#")
    if base != PORTS.runbook_base() or not anchor:
        raise ValueError(f"alert {alert}: runbook_url {url} is not {PORTS.runbook_base()}#...")
    return "${runbook_url}#" + anchor


def dashboard_url(uid: str) -> str:
    return f"/d/{uid}/{uid.removeprefix('aq-')}"


# ---------------------------------------------------------------- shared parts


def datasource_variable() -> Json:
    return {"type": "datasource", "name": "datasource", "label": "Data source",
            "query": "prometheus", "regex": "", "hide": 0, "refresh": 1,
            "current": {"text": "Prometheus", "value": PROVISIONED_DATASOURCE}}


def query_variable(name: str, label: str, metric: str, *, multi: bool = True,
                   numeric: bool = False, description: str = "") -> Json:
    out: Json = {"type": "query", "name": name, "label": label, "description": description,
                 "datasource": DATASOURCE, "query": f"label_values({metric}, {name})",
                 "regex": "", "hide": 0, "refresh": 2, "sort": 3 if numeric else 1,
                 "multi": multi, "includeAll": multi}
    if multi:
        out["allValue"] = ".+"
        out["current"] = {"text": ["All"], "value": ["$__all"]}
    return out


def constant(name: str, value: str) -> Json:
    return {"type": "constant", "name": name, "query": value, "hide": 2, "skipUrlSync": True}


URL_CONSTANTS = [constant("airflow_url", PORTS.url("airflow")),
                 constant("prometheus_url", PORTS.url("prometheus")),
                 constant("runbook_url", PORTS.runbook_base())]
BUILT_IN = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard",
            "target": {"limit": 100, "matchAny": False, "tags": [], "type": "dashboard"}}


def annotation(name: str, expr: str, color: str) -> Json:
    """Prometheus annotation: a marker wherever ``expr`` is > 0 (the SDK keeps ``expr`` only,
    so each kind of event is its own query with its own name and colour)."""
    return {"name": name, "datasource": DATASOURCE, "enable": True, "hide": False,
            "iconColor": color, "expr": expr, "builtIn": 0}


def _just_happened(selector: str) -> str:
    """1 at the first evaluation step after the timestamp a gauge holds, else 0."""
    return f"(time() - {selector}) < bool ($__interval_ms / 1000)"


FAILED_STEPS = annotation("Failed steps", "aq_step_success == bool 0", "red")
PROMOTIONS = annotation(
    "Promotions", _just_happened('aq_champion_switched_timestamp_seconds{action="promote"}'),
    "green")
ROLLBACKS = annotation(
    "Rollbacks", _just_happened('aq_champion_switched_timestamp_seconds{action="rollback"}'),
    "orange")

NAVIGATION = [
    {"title": "Air quality", "type": "dashboards", "tags": [TAG], "asDropdown": True,
     "includeVars": True, "keepTime": True},
    {"title": "Airflow UI", "type": "link", "url": "${airflow_url}", "icon": "external link",
     "targetBlank": True},
    {"title": "Alerts (Prometheus)", "type": "link", "url": "${prometheus_url}/classic/alerts",
     "icon": "bolt", "targetBlank": True},
    {"title": "Runbook", "type": "link", "url": "${runbook_url}", "icon": "doc",
     "targetBlank": True},
]


def board(uid: str, title: str, description: str, *variables: Json,
          annotations: tuple[Json, ...] = ()) -> Board:
    return Board(uid=uid, title=title, description=description, tags=(TAG,),
                 variables=[datasource_variable(), *variables, *URL_CONSTANTS],
                 annotations=[BUILT_IN, *annotations], links=list(NAVIGATION))


def alert_links(alert: str) -> list[Json]:
    return [link(f"Runbook: {alert}", runbook_url(alert), blank=True),
            link("Alerts (Prometheus)", "${prometheus_url}/classic/alerts", blank=True)]


def goto(uid: str, title: str) -> Json:
    return link(title, f"{dashboard_url(uid)}?${{__url_time_range}}")


# panel options
def stat_options(text_mode: str = "value_and_name", color_mode: str = "background") -> Json:
    return {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": color_mode, "graphMode": "none", "justifyMode": "auto",
            "textMode": text_mode, "orientation": "auto", "wideLayout": True,
            "showPercentChange": False}


def bar_options() -> Json:
    return {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True,
            "valueMode": "color", "namePlacement": "auto", "sizing": "auto",
            "minVizWidth": 8, "minVizHeight": 16, "maxVizHeight": 300}


def series_options(legend: str = "list") -> Json:
    return {"legend": {"showLegend": True, "displayMode": legend, "placement": "bottom",
                       "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"}}


def series_style(threshold_style: str = "off", fill: int = 0) -> Json:
    return {"drawStyle": "line", "lineWidth": 1, "fillOpacity": fill, "showPoints": "auto",
            "spanNulls": False, "thresholdsStyle": {"mode": threshold_style}}


def table_options(sort: str | None = None) -> Json:
    out: Json = {"showHeader": True, "cellHeight": "sm",
                 "footer": {"show": False, "reducer": ["sum"], "countRows": False}}
    if sort:
        out["sortBy"] = [{"displayName": sort, "desc": False}]
    return out


def organize(rename: dict[str, str], exclude: tuple[str, ...] = ("Time", "job", "instance",
                                                                  "step")) -> Json:
    return {"id": "organize", "options": {"excludeByName": {k: True for k in exclude},
                                          "renameByName": rename, "indexByName": {}}}


MERGE = {"id": "merge", "options": {}}


def by_name(name: str, *properties: tuple[str, Any]) -> Json:
    return {"matcher": {"id": "byName", "options": name},
            "properties": [{"id": k, "value": v} for k, v in properties]}


UGM3 = units.MicrogramPerCubicMeter

# ---------------------------------------------------------------- pipeline health


def pipeline_health() -> Board:
    b = board("aq-pipeline-health", "Air quality: pipeline health",
              "Is the pipeline running, fresh and sane? Steps, ingestion, a summary of model, "
              "drift and forecasts (details on their own dashboards) and the machine.",
              query_variable("step", "Step", "aq_step_success",
                             description="Pipeline steps (and Airflow task ids of failures "
                                         "around a step)"),
              query_variable("location", "Location", "aq_ingest_location_success"),
              annotations=(FAILED_STEPS, PROMOTIONS, ROLLBACKS))
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


# ---------------------------------------------------------------- model quality

TH = 'target=~"$target",horizon=~"$horizon"'


def model_quality() -> Board:
    b = board("aq-model-quality", "Air quality: model quality",
              "How good are the models? Holdout and realised skill against persistence by "
              "target x horizon over time, MAE with units, interval coverage, the champion and "
              "its history (promotions and rollbacks as annotations).",
              query_variable("target", "Target", "aq_model_skill"),
              query_variable("horizon", "Horizon (h)", "aq_model_skill", numeric=True),
              annotations=(PROMOTIONS, ROLLBACKS))
    skill_doc = ("1 - MAE / MAE of persistence ('the value stays as it is now'): above 0 the "
                 "model beats persistence.")
    b.row("Holdout: the candidate on the last evaluation.holdout_days")
    b.add("timeseries", "Holdout skill by target x horizon",
          [Query(f"aq_model_skill{{{TH}}}", "{{target}} {{horizon}} h")], w=12, h=9,
          unit=units.PercentUnit, custom=series_style("line"), options=series_options("table"),
          thresholds=alert_thresholds("ModelSkillBelowPersistence"),
          alert="ModelSkillBelowPersistence", links=alert_links("ModelSkillBelowPersistence"),
          description=f"{skill_doc} Each evaluation sets a new value; the line is where "
                      "ModelSkillBelowPersistence fires and the gate refuses.")
    b.add("timeseries", "Holdout MAE: candidate vs persistence",
          [Query(f"aq_model_mae{{{TH}}}", "{{target}} {{horizon}} h model"),
           Query(f"aq_model_persistence_mae{{{TH}}}", "{{target}} {{horizon}} h persistence")],
          w=12, h=9, unit=UGM3, min_value=0, custom=series_style(),
          options=series_options("table"),
          overrides=[{"matcher": {"id": "byRegexp", "options": ".* persistence$"},
                      "properties": [{"id": "custom.lineStyle",
                                      "value": {"fill": "dash", "dash": [10, 10]}}]}],
          description="Mean absolute error on the holdout, the model (solid) and the "
                      "persistence baseline (dashed) on the same rows.")
    b.add("bargauge", "AQI category accuracy",
          [Query(f"aq_model_aqi_category_accuracy{{{TH}}}", "{{target}} {{horizon}} h",
                 instant=True)], w=12, unit=units.PercentUnit, min_value=0, max_value=1,
          thresholds=thresholds("red", (0.5, "orange"), (0.8, "green")), options=bar_options(),
          description="Share of holdout hours whose forecast AQI category is the observed one.")
    b.add("timeseries", "Interval coverage (nominal 80 %)",
          [Query(f"aq_model_interval_coverage{{{TH}}}", "{{target}} {{horizon}} h",
                 empty_ok="always")], w=12, unit=units.PercentUnit, min_value=0, max_value=1,
          custom=series_style("line"), options=series_options(),
          thresholds=thresholds("red", (0.78, "green"), (0.82, "orange")),
          hint="Empty until the models give prediction intervals (80 %, issue 12).",
          description="Share of holdout observations inside the 80 % interval; 78-82 % is on "
                      "target, lower means the interval is too narrow.")

    b.row("Realised: issued forecasts against what was then observed")
    matured = ("No forecast has matured yet: a forecast is scored once its hour has been "
               "observed, so the first scores come h hours after the first batch.")
    b.add("timeseries", "Realised skill",
          [Query(f"aq_realised_skill{{{TH}}}", "{{target}} {{horizon}} h")], w=12, h=9,
          unit=units.PercentUnit, custom=series_style("line"), options=series_options("table"),
          thresholds=alert_thresholds("RealisedAccuracyDegraded"), hint=matured,
          alert="RealisedAccuracyDegraded", links=alert_links("RealisedAccuracyDegraded"),
          description=f"{skill_doc} Over all scored forecasts of the champion(s); "
                      "RealisedAccuracyDegraded fires below 0 with at least 24 scored.")
    b.add("timeseries", "Realised MAE vs holdout MAE",
          [Query(f"aq_realised_mae{{{TH}}}", "{{target}} {{horizon}} h realised"),
           Query(f"aq_model_mae{{{TH}}}", "{{target}} {{horizon}} h holdout")], w=12, h=9,
          unit=UGM3, min_value=0, custom=series_style(), options=series_options("table"),
          hint=matured,
          overrides=[{"matcher": {"id": "byRegexp", "options": ".* holdout$"},
                      "properties": [{"id": "custom.lineStyle",
                                      "value": {"fill": "dash", "dash": [10, 10]}}]}],
          description="Error of issued forecasts (solid) next to what the holdout promised "
                      "(dashed): a widening gap is the model ageing.")
    b.add("bargauge", "Forecasts scored",
          [Query(f"aq_realised_forecasts_scored{{{TH}}}", "{{target}} {{horizon}} h",
                 instant=True)], w=12, options=bar_options(), hint=matured,
          thresholds=thresholds("text", (rule_threshold("RealisedAccuracyDegraded", 1)[1],
                                         "green")),
          description="Scored forecasts per target x horizon; below 24 the realised skill is "
                      "too noisy to alert on (RealisedAccuracyDegraded needs 24).")
    b.add("timeseries", "Realised interval coverage (nominal 80 %)",
          [Query(f"aq_realised_interval_coverage{{{TH}}}", "{{target}} {{horizon}} h",
                 empty_ok="always")], w=12, unit=units.PercentUnit, min_value=0, max_value=1,
          custom=series_style("line"), options=series_options(),
          thresholds=thresholds("red", (0.78, "green"), (0.82, "orange")),
          hint="Empty until forecasts carry prediction intervals (80 %, issue 12).",
          description="Share of later observations inside the issued forecasts' 80 % interval.")

    b.row("Champion")
    b.add("table", "Champion",
          [Query("aq:champion_info", instant=True, table=True),
           Query("aq:champion_created_timestamp_seconds * 1000", instant=True, table=True),
           Query("max by (job, action) (aq_champion_switched_timestamp_seconds) * 1000",
                 instant=True, table=True)], w=12, h=5,
          transformations=[MERGE, organize({"version": "version", "Value #B": "trained",
                                            "Value #C": "champion since", "action": "by"},
                                           ("Time", "job", "instance", "Value #A"))],
          overrides=[by_name("trained", ("unit", units.DatetimeISO)),
                     by_name("champion since", ("unit", units.DatetimeISO))],
          options=table_options(),
          description="The model serving forecasts now, when it was trained, since when it is "
                      "champion and which step made it so (promote or rollback).")
    b.add("stat", "Champion age", [Query("aq:champion_age_seconds", "age")], w=6, h=5,
          unit=units.DurationSeconds, thresholds=alert_thresholds("ChampionNotRefreshed"),
          options=stat_options("value"), alert="ChampionNotRefreshed",
          links=alert_links("ChampionNotRefreshed"),
          description="Since the champion was trained; ChampionNotRefreshed fires at 7 days.")
    b.add("stat", "Last promotion gate", [Query("aq_promotion_promoted", "gate")], w=6, h=5,
          mappings=value_map(("1", "promoted", "green"), ("0", "refused", "orange")),
          options=stat_options("value"),
          description="Did the last candidate pass the gate (beats persistence everywhere, no "
                      "regression against the champion)? Reasons: reports/promotion.json.")
    b.add("state-timeline", "Champion history", [Query("aq:champion_info", "{{version}}")],
          w=24, h=6, options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                              "alignValue": "left",
                              "legend": {"showLegend": False, "displayMode": "list",
                                         "placement": "bottom", "calcs": []},
                              "tooltip": {"mode": "single", "sort": "none"}},
          mappings=value_map(("1", "champion", "green")),
          description="Which version was champion when; promotions and rollbacks are also "
                      "marked on every time series.")
    return b


# ---------------------------------------------------------------- forecasts


def forecasts() -> Board:
    b = board("aq-forecasts", "Air quality: forecasts",
              "What is forecast, and how did earlier forecasts do against what was observed? "
              "Per location: the last batch with its interval, the forecast h hours ahead "
              "against the observations as they arrive, AQI category bands.",
              # every configured location, those withheld this run too (they say why)
              query_variable("location", "Location", "aq_forecast_degraded"),
              query_variable("target", "Target", "aq_forecast_value", multi=False),
              query_variable("horizon", "Horizon (h)", "aq_forecast_value", multi=False,
                             numeric=True,
                             description="Hours ahead, for the forecast-against-observation "
                                         "panels"),
              annotations=(PROMOTIONS, ROLLBACKS))
    where = 'location=~"$location",target="$target"'
    limits = params()["forecast"]
    b.row("All locations")
    b.add("bargauge", "Highest forecast AQI in the next 24 h",
          [Query(f"aq_forecast_max_aqi_24h{{{where}}}", "{{location}}", instant=True)],
          w=12, h=9, min_value=0, max_value=500, thresholds=aqi_steps(), options=bar_options(),
          alert="ForecastAQIUnhealthy", links=alert_links("ForecastAQIUnhealthy"),
          description="US AQI of the highest forecast within 24 h, in EPA category colours "
                      "(Good, Moderate, Unhealthy for sensitive groups, Unhealthy, Very "
                      "unhealthy, Hazardous); ForecastAQIUnhealthy fires above 150.")
    b.add("table", "Latest observation and forecast by location",
          [Query(f"max by (location) (aq_observation_value{{{where}}})", instant=True,
                 table=True),
           Query(f'max by (location) (aq_forecast_value{{{where},horizon="$horizon"}})',
                 instant=True, table=True),
           Query(f"max by (location) (time() - aq_observation_timestamp_seconds{{{where}}})",
                 instant=True, table=True),
           Query('max by (location) (aq_forecast_issue_timestamp_seconds{location=~"$location"})'
                 " * 1000", instant=True, table=True),
           Query(f"max by (location) (aq_forecast_hours_since_observation{{{where}}})",
                 instant=True, table=True)],
          w=12, h=9, transformations=[MERGE, organize({
              "Value #A": "observed", "Value #B": "forecast $horizon h ahead",
              "Value #C": "observation age", "Value #D": "issued from",
              "Value #E": "h since observed at issue"})],
          overrides=[by_name("observed", ("unit", UGM3)),
                     by_name("forecast $horizon h ahead", ("unit", UGM3)),
                     by_name("observation age", ("unit", units.DurationSeconds)),
                     by_name("issued from", ("unit", units.DatetimeISO)),
                     by_name("h since observed at issue", ("unit", units.Hours),
                             ("thresholds", thresholds(
                                 "green", (limits["max_hours_since_observation"], "red"))),
                             ("custom.cellOptions", {"type": "color-text"}))],
          options=table_options("location"),
          description="Per location: the newest observation, the last batch's forecast "
                      "$horizon h ahead, how old the observation is, the hour the batch "
                      "forecast from and how old the target's observation was then (red beyond "
                      "forecast.max_hours_since_observation: no forecast).")

    b.row("$location", repeat="location")
    one = 'location="$location",target="$target"'
    interval_hint = ("No forecast for $location this run (see 'Forecast this run'), or no "
                     "80 % interval yet: the band appears once the models give prediction "
                     "intervals (issue 12).")
    b.add("stat", "Latest observation", [Query(f"aq_observation_value{{{one}}}", "{{target}}")],
          w=4, h=4, unit=UGM3, overrides=concentration_overrides("^%s$"),
          options=stat_options("value"),
          description="Newest stored observation, coloured by its AQI category.")
    b.add("stat", "Observation age",
          [Query(f"time() - aq_observation_timestamp_seconds{{{one}}}", "{{target}}")],
          w=4, h=4, unit=units.DurationSeconds,
          thresholds=alert_thresholds("IngestionFreshnessLag"), options=stat_options("value"),
          alert="IngestionFreshnessLag", links=alert_links("IngestionFreshnessLag"),
          description="How old the newest observation is; red beyond IngestionFreshnessLag's "
                      "threshold.")
    b.add("stat", "Max AQI next 24 h", [Query(f"aq_forecast_max_aqi_24h{{{one}}}", "AQI")],
          w=4, h=4, min_value=0, max_value=500, thresholds=aqi_steps(),
          options=stat_options("value"), alert="ForecastAQIUnhealthy",
          links=alert_links("ForecastAQIUnhealthy"),
          description="Highest forecast US AQI within the next 24 h.")
    b.add("stat", "Forecast issued from",
          [Query('aq_forecast_issue_timestamp_seconds{location="$location"} * 1000', "issued")],
          w=4, h=4, unit=units.DatetimeISO, options=stat_options("value", "none"),
          description="The hour of the newest input the last batch forecast from.")
    limits = params()["forecast"]
    b.add("stat", "Input completeness",
          [Query('aq_forecast_input_completeness{location="$location"}', "inputs")], w=4, h=4,
          unit=units.PercentUnit,
          thresholds=thresholds("red", (limits["min_input_completeness"], "green")),
          options=stat_options("value"),
          description="Share of the champion's features present in the latest input row; "
                      "below forecast.min_input_completeness (params.yaml) the location gets "
                      "no forecast.")
    b.add("stat", "Forecast this run",
          [Query('aq_forecast_degraded{location="$location"}', "forecast")], w=4, h=4,
          mappings=value_map(("0", "issued", "green"), ("1", "withheld", "orange")),
          options=stat_options("value"), alert="ForecastWithheld",
          links=alert_links("ForecastWithheld"),
          description="Withheld when the inputs were too incomplete or the target's last "
                      "observation too old (forecast in params.yaml): no forecast, no AQI alert; "
                      "the predict task log says why. ForecastWithheld fires once a location "
                      f"has been withheld for {alert_rules()['ForecastWithheld']['for']}.")
    b.add("timeseries", "Forecast $horizon h ahead against the observation",
          [Query(f"aq_observation_value{{{one}}}", "{{target}} observed"),
           Query(f'aq_forecast_value{{{one},horizon="$horizon"}} offset ${{horizon}}h',
                 "{{target}} forecast"),
           Query(f'aq_forecast_lower{{{one},horizon="$horizon"}} offset ${{horizon}}h',
                 "{{target}} lower", empty_ok="always"),
           Query(f'aq_forecast_upper{{{one},horizon="$horizon"}} offset ${{horizon}}h',
                 "{{target}} upper", empty_ok="always")],
          w=16, h=10, unit=UGM3, min_value=0, custom=series_style("area"),
          options=series_options(), hint=interval_hint,
          overrides=[*concentration_overrides("^%s .*"),
                     {"matcher": {"id": "byRegexp", "options": ".* forecast$"},
                      "properties": [{"id": "custom.lineWidth", "value": 2}]},
                     *({"matcher": {"id": "byName", "options": f"{target} upper"},
                        "properties": [{"id": "custom.fillBelowTo", "value": f"{target} lower"},
                                       {"id": "custom.lineWidth", "value": 0},
                                       {"id": "custom.fillOpacity", "value": 20}]}
                       for target in POLLUTANTS),
                     {"matcher": {"id": "byRegexp", "options": ".* lower$"},
                      "properties": [{"id": "custom.lineWidth", "value": 0}]}],
          description="At each moment: the newest observation, and what the forecast issued "
                      "$horizon h earlier said for it (PromQL offset), with its 80 % interval. "
                      "Both lag the clock by the ingestion delay. Background: AQI category "
                      "bands of the pollutant in ug/m3.")
    b.add("table", "Last batch by horizon",
          [Query(f"max by (horizon) (aq_forecast_value{{{one}}})", instant=True, table=True),
           Query(f"max by (horizon) (aq_forecast_lower{{{one}}})", instant=True, table=True,
                 empty_ok="always"),
           Query(f"max by (horizon) (aq_forecast_upper{{{one}}})", instant=True, table=True,
                 empty_ok="always")],
          w=8, h=10, hint=interval_hint,
          transformations=[MERGE,
                           {"id": "convertFieldType", "options": {"conversions": [
                               {"targetField": "horizon", "destinationType": "number"}],
                               "fields": {}}},
                           organize({"horizon": "hours ahead", "Value #A": "forecast",
                                     "Value #B": "80 % low", "Value #C": "80 % high"})],
          overrides=[by_name("forecast", ("unit", UGM3)), by_name("80 % low", ("unit", UGM3)),
                     by_name("80 % high", ("unit", UGM3))],
          options=table_options("hours ahead"),
          description="The last batch for $location: every horizon with its 80 % interval "
                      "(when the model gives one).")
    return b


# ---------------------------------------------------------------- drift


def drift() -> Board:
    psi_threshold = drift_params()["psi_threshold"]
    share_threshold = drift_params()["share_threshold"]
    b = board("aq-drift", "Air quality: drift",
              "Do today's inputs look like the data the champion learnt from? PSI per feature "
              "over the recent window against the champion's training rows of the same season, "
              "the share drifted and the periods compared.",
              query_variable("feature", "Feature", "aq_drift_psi"),
              annotations=(PROMOTIONS, ROLLBACKS))
    b.row("Now")
    b.add("stat", "Share of drifted features", [Query("aq_drift_share", "drifted")], w=4, h=6,
          unit=units.PercentUnit, thresholds=thresholds("green", (share_threshold, "red")),
          options=stat_options("value"), alert="DriftDetected",
          links=alert_links("DriftDetected"),
          description=f"Features with PSI above {psi_threshold} (drift.psi_threshold); "
                      f"DriftDetected above {share_threshold:.0%} (drift.share_threshold).")
    b.add("stat", "Drift detected", [Query("aq_drift_detected", "drift")], w=4, h=6,
          mappings=value_map(("0", "no drift", "green"), ("1", "drift", "red")),
          options=stat_options("value"), alert="DriftDetected",
          links=alert_links("DriftDetected"),
          description="The drift step's verdict (share above the threshold).")
    b.add("table", "Compared periods",
          [Query("aq_drift_period_start_timestamp_seconds * 1000", instant=True, table=True),
           Query("aq_drift_period_end_timestamp_seconds * 1000", instant=True, table=True)],
          w=10, h=6,
          transformations=[MERGE, organize({"Value #A": "from", "Value #B": "to"})],
          overrides=[by_name("from", ("unit", units.DatetimeISO)),
                     by_name("to", ("unit", units.DatetimeISO))],
          options=table_options("period"),
          description="training: the champion's training rows (the reference distribution); "
                      "recent: the window of drift.window_days that is compared.")
    b.add("table", "Reference months",
          [Query("aq_drift_reference_info", instant=True, table=True)], w=6, h=6,
          transformations=[organize({"months": "training months compared",
                                     "seasonal": "same season"}, ("Time", "job", "instance",
                                                                  "step", "Value"))],
          options=table_options(),
          description="The calendar months of the training data the recent window is compared "
                      "with: the same season (its months and their neighbours), or all when "
                      "training barely covers it.")
    b.add("bargauge", "PSI per feature",
          [Query('sort_desc(aq_drift_psi{feature=~"$feature"})', "{{feature}}", instant=True)],
          w=12, h=16, min_value=0, thresholds=thresholds("green", (psi_threshold, "red")),
          options=bar_options(),
          description=f"Population stability index of each feature, recent window vs the "
                      f"reference; red above drift.psi_threshold ({psi_threshold}).")
    b.add("timeseries", "PSI over time (10 largest)",
          [Query('topk(10, aq_drift_psi{feature=~"$feature"})', "{{feature}}")], w=12, h=8,
          min_value=0, custom=series_style("line"), options=series_options(),
          thresholds=thresholds("green", (psi_threshold, "red")),
          description="The ten largest PSIs at each moment; the line is drift.psi_threshold.")
    b.add("timeseries", "Share of drifted features over time",
          [Query("aq_drift_share", "drifted")], w=12, h=8, unit=units.PercentUnit,
          min_value=0, max_value=1, custom=series_style("line"), options=series_options(),
          thresholds=thresholds("green", (share_threshold, "red")),
          description="The line is drift.share_threshold: above it DriftDetected fires.")
    return b


# ---------------------------------------------------------------- Airflow

AIRFLOW_STATES = value_map(("success", "success", "green"), ("failed", "failed", "red"),
                           ("running", "running", "blue"), ("queued", "queued", "yellow"))


def airflow() -> Board:
    b = board("aq-airflow", "Air quality: Airflow",
              "Is the schedule running? DAG runs and task instances by state (airflow-exporter "
              "reads Airflow's database on each scrape), what waits, how long steps take, and "
              "links into the Airflow UI.",
              query_variable("dag_id", "DAG", "airflow_dag_status"),
              annotations=(FAILED_STEPS,))
    dag = 'dag_id=~"$dag_id"'
    b.row("DAG runs")
    b.add("table", "Last run of each DAG",
          [Query(f"max by (dag_id, status, paused) (airflow_dag_last_status{{{dag}}} == 1)",
                 instant=True, table=True)], w=12,
          transformations=[organize({"dag_id": "DAG", "status": "last run"},
                                    ("Time", "Value"))],
          overrides=[by_name("last run", ("mappings", AIRFLOW_STATES),
                             ("custom.cellOptions", {"type": "color-background"})),
                     by_name("DAG", ("links", [link(
                         "Open ${__data.fields.DAG} in Airflow",
                         "${airflow_url}/dags/${__data.fields.DAG}", blank=True)]))],
          options=table_options("DAG"),
          description="State of each DAG's most recently updated run, and whether the DAG is "
                      "paused; a DAG opens in the Airflow UI.")
    b.add("bargauge", "Runs kept by state",
          [Query(f"sum by (status) (airflow_dag_status{{{dag}}})", "{{status}}", instant=True)],
          w=6, options=bar_options(), overrides=[
              by_name("failed", ("color", {"mode": "fixed", "fixedColor": "red"})),
              by_name("success", ("color", {"mode": "fixed", "fixedColor": "green"}))],
          color={"mode": "fixed", "fixedColor": "blue"},
          description="DAG runs Airflow keeps, by state.")
    b.add("stat", "Failed runs kept",
          [Query(f'sum(airflow_dag_status{{{dag},status="failed"}}) or vector(0)', "failed")],
          w=6, thresholds=thresholds("green", (1, "red")), options=stat_options("value"),
          links=[link("DAG runs in Airflow", "${airflow_url}/dag_runs", blank=True)],
          description="Failed DAG runs among those kept; each failed pipeline task also pushes "
                      "aq_step_success 0 (PipelineStepFailing).")
    b.add("timeseries", "Longest running run",
          [Query(f"airflow_dag_run_duration{{{dag}}}", "{{dag_id}}", empty_ok="always")], w=12,
          unit=units.Seconds, custom=series_style(), options=series_options(),
          hint="No DAG run is running now.",
          description="How long each DAG's longest running run has been running (a stuck run "
                      "keeps growing).")
    b.add("timeseries", "Queued and scheduled task instances",
          [Query(f'sum by (dag_id) (airflow_task_status{{{dag},status=~"queued|scheduled"}})',
                 "{{dag_id}}", empty_ok="always")], w=12, custom=series_style(),
          options=series_options(), hint="Nothing waits: no task instance is queued or "
                                         "scheduled.",
          description="Task instances waiting for a slot (the one-slot dvc pool serialises "
                      "DVC work, so retraining and ingestion queue behind each other).")

    b.row("Tasks")
    b.add("table", "Task instances by state",
          [Query(f"sum by (dag_id, task_id, status) (airflow_task_status{{{dag}}})",
                 instant=True, table=True)], w=12, h=10,
          transformations=[organize({"dag_id": "DAG", "task_id": "task", "Value": "instances"},
                                    ("Time",))],
          overrides=[by_name("status", ("mappings", AIRFLOW_STATES),
                             ("custom.cellOptions", {"type": "color-text"})),
                     by_name("task", ("links", [link(
                         "Open ${__data.fields.task} in Airflow",
                         "${airflow_url}/dags/${__data.fields.DAG}/tasks/${__data.fields.task}",
                         blank=True)]))],
          options=table_options("DAG"),
          description="Task instances Airflow keeps per task and state; a task opens in the "
                      "Airflow UI.")
    b.add("bargauge", "Failed task instances",
          [Query(f'sum by (dag_id, task_id) (airflow_task_status{{{dag},'
                 'status=~"failed|upstream_failed"})', "{{dag_id}} {{task_id}}",
                 instant=True, empty_ok="always")], w=6, h=10,
          thresholds=thresholds("red"), options=bar_options(),
          hint="No task instance failed.",
          data_links=[link("Open the task in Airflow",
                           "${airflow_url}/dags/${__field.labels.dag_id}/tasks/"
                           "${__field.labels.task_id}", blank=True)],
          description="Failed (or upstream-failed) task instances per task.")
    b.add("timeseries", "Running task instances",
          [Query(f'sum by (dag_id) (airflow_task_status{{{dag},status="running"}})',
                 "{{dag_id}}", empty_ok="always")], w=6, h=10, custom=series_style(),
          options=series_options(), hint="No task instance is running.",
          description="Task instances running now.")

    b.row("Pipeline steps the tasks run")
    b.add("stat", "Step outcome (last run)", [Query("aq_step_success", "{{step}}")], w=12,
          mappings=OUTCOME, thresholds=thresholds("red", (1, "green")), options=stat_options(),
          alert="PipelineStepFailing", links=alert_links("PipelineStepFailing"),
          description="Pushed by each step (and by a DAG's failure callback, under the task "
                      "id) when it ends.")
    b.add("timeseries", "Step duration", [Query("aq_step_duration_seconds", "{{step}}")], w=12,
          unit=units.Seconds, custom=series_style(), options=series_options(),
          description="Wall time of each step's last run: airflow-exporter has no task "
                      "durations, the steps report their own.")

    b.row("Airflow API server")
    b.add("stat", "Airflow scraped", [Query('up{job="airflow"}', "airflow")], w=6,
          mappings=UP, thresholds=thresholds("red", (1, "green")),
          options=stat_options("value"), alert="TargetDown", links=alert_links("TargetDown"),
          description="Prometheus scrapes /admin/metrics/ on the API server every 30 s.")
    b.add("timeseries", "Metrics scrape duration",
          [Query('scrape_duration_seconds{job="airflow"}', "scrape")], w=9,
          unit=units.Seconds, custom=series_style(), options=series_options(),
          description="airflow-exporter queries the metadata database on each scrape: slow "
                      "scrapes mean a loaded database.")
    b.add("timeseries", "API server memory",
          [Query('process_resident_memory_bytes{job="airflow"}', "resident")], w=9,
          unit=units.BytesIEC, custom=series_style(), options=series_options(),
          description="Resident memory of the API server process that serves the metrics.")
    return b


BUILDERS = (pipeline_health, model_quality, forecasts, drift, airflow)
FILES = {"aq-pipeline-health": "pipeline-health.json", "aq-model-quality": "model-quality.json",
         "aq-forecasts": "forecasts.json", "aq-drift": "drift.json", "aq-airflow": "airflow.json"}


# ---------------------------------------------------------------- typed models, output


def typed_round_trip(dashboard: Json) -> Json:
    """The dashboard as grafana-foundation-sdk's models read and write it."""
    register_default_plugins()
    model = Dashboard.from_json(dashboard)
    return json.loads(json.dumps(model, cls=JSONEncoder))


def lost_in(original: Any, typed: Any, path: str = "") -> list[str]:
    """Paths of keys or values of ``original`` that ``typed`` does not carry unchanged."""
    if isinstance(original, dict) and isinstance(typed, dict):
        return [p for k, v in original.items()
                for p in ([f"{path}/{k}"] if k not in typed else lost_in(v, typed[k],
                                                                          f"{path}/{k}"))]
    if isinstance(original, list) and isinstance(typed, list) and len(original) == len(typed):
        return [p for i, (a, b) in enumerate(zip(original, typed, strict=True))
                for p in lost_in(a, b, f"{path}[{i}]")]
    return [] if original == typed else [path or "/"]


def build() -> tuple[dict[str, Json], list[PanelMeta]]:
    """{file name: dashboard JSON} of every generated dashboard, and what the checks need."""
    out, meta = {}, []
    for builder in BUILDERS:
        b = builder()
        raw = b.json()
        typed = typed_round_trip(raw)
        lost = lost_in(raw, typed)
        if lost:
            raise ValueError(f"{b.uid}: grafana-foundation-sdk's models drop {lost[:10]}")
        out[FILES[b.uid]] = typed
        meta.extend(b.meta)
    return out, meta


def render(dashboard: Json) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------- layout pictures


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        candidate = f"{line} {word}".strip()
        if len(candidate) <= width:
            line = candidate
        else:
            if line:
                lines.append(line)
            line = word[:width]
    return [*lines, line] if line else lines


def layout(dashboard: Json, scale: int = 4) -> str:
    """A text picture of the grid: rows as bars, panels as boxes ``scale`` chars per column."""
    width = 24 * scale
    out = []
    panels = sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    lines: dict[int, list[Json]] = {}
    for panel in panels:
        lines.setdefault(panel["gridPos"]["y"], []).append(panel)
    for _, line in sorted(lines.items()):
        if line[0]["type"] == "row":
            title = line[0]["title"] + (" (repeated per value)" if line[0].get("repeat") else "")
            out.append(f"=== {title} " + "=" * max(0, width - len(title) - 5))
            continue
        cells = []
        for panel in line:
            inner = panel["gridPos"]["w"] * scale - 1
            cells.append((panel, inner, _wrap(f"{panel['title']} [{panel['type']}]", inner)))
        depth = max(len(c[2]) for c in cells)
        border = "+" + "+".join("-" * inner for _, inner, _ in cells) + "+"
        out.append(border)
        for i in range(depth):
            out.append("|" + "|".join((text[i] if i < len(text) else "").ljust(inner)
                                      for _, inner, text in cells) + "|")
        out.append(border)
    return "\n".join(out)


def docs_block(file_name: str, dashboard: Json) -> str:
    return f"```\n{layout(dashboard)}\n```"


BLOCK = re.compile(r"(<!-- layout: (?P<file>[\w.-]+) -->)(?P<body>.*?)(<!-- /layout -->)", re.S)


def with_layouts(doc: str, dashboards: dict[str, Json]) -> str:
    """docs/monitoring.md with every ``<!-- layout: file -->`` block redrawn."""

    def redraw(match: re.Match) -> str:
        name = match["file"]
        if name not in dashboards:
            raise ValueError(f"{MONITORING_DOC.name}: layout block of unknown dashboard {name}")
        return f"{match[1]}\n{docs_block(name, dashboards[name])}\n{match[4]}"

    return BLOCK.sub(redraw, doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="only compare with the committed files; exit 1 if they differ")
    args = parser.parse_args(argv)
    dashboards, _ = build()
    wanted = {DASHBOARDS / name: render(d) for name, d in dashboards.items()}
    wanted[MONITORING_DOC] = with_layouts(MONITORING_DOC.read_text(), dashboards)
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(REPO)}", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
