"""What every dashboard shares: variables, the URL constants, annotations, the navigation,
alert links and the panel option presets (on top of grafana/board.py's grid and panels)."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.models import units

from grafana.board import DATASOURCE, Board, Json, link
from grafana.sources import runbook_url
from pipeline.settings import Ports

TAG = "aq"  # every dashboard carries it: the "Air quality" menu lists them
PORTS = Ports()  # the default addresses: local stack and docker-compose (network_mode: host)
PROVISIONED_DATASOURCE = "prometheus"  # uid in grafana/provisioning/datasources/prometheus.yml
UGM3 = units.MicrogramPerCubicMeter


def dashboard_url(uid: str) -> str:
    return f"/d/{uid}/{uid.removeprefix('aq-')}"


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
# a candidate the gate refused: the champion stayed (reasons: `python -m pipeline summary`,
# the skipped promote task in Airflow)
REFUSALS = annotation(
    "Refused promotions", _just_happened("aq_promotion_refused_timestamp_seconds"), "purple")

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
          annotations: tuple[Json, ...] = (), tags: tuple[str, ...] = (),
          refresh: str = "1m", time_from: str = "now-24h") -> Board:
    """A dashboard with what they all have: the datasource variable, the URL constants, the
    built-in annotations, the navigation links and the ``aq`` tag."""
    return Board(uid=uid, title=title, description=description, tags=(TAG, *tags),
                 variables=[datasource_variable(), *variables, *URL_CONSTANTS],
                 annotations=[BUILT_IN, *annotations], links=list(NAVIGATION),
                 refresh=refresh, time_from=time_from)


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
