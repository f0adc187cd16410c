"""Grafana provisioning and dashboards, checked without Grafana (queries run live elsewhere:
tests/integration/test_grafana_dashboards.py and tests/dags/test_airflow_scheduler.py)."""

from __future__ import annotations

import re
import urllib.parse
from functools import cache
from pathlib import Path

import pytest
import yaml

from grafana import generate, layout, parts, sources, typed
from grafana.boards import serving as serving_board
from pipeline.core.aqi import category_thresholds
from pipeline.io.metrics import CATALOGUE
from pipeline.settings import Ports
from stack import runbook
from tests.grafana_doc import (
    BUILT_IN,
    PENDING,
    dashboards,
    expand,
    metric_names,
    panels,
    referenced,
    variables,
)
from tests.metrics_doc import documented_metrics

REPO = Path(__file__).resolve().parents[2]
PROVISIONING = REPO / "grafana" / "provisioning"
QUESTIONS = {"pipeline-health.json", "model-quality.json", "forecasts.json", "drift.json",
             "airflow.json", "serving.json"}
PROMETHEUS_PAGES = {"/classic/alerts"}  # opened for real in the integration test


@cache
def built() -> tuple[dict, list]:
    return generate.build()


GENERATED = set(built()[0])


def committed() -> dict[str, dict]:
    return {p.name: d for p, d in dashboards()}


def datasource_uids() -> set[str]:
    cfg = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    return {d["uid"] for d in cfg["datasources"]}


def panel_by_id(dashboard: dict, panel_id: int) -> dict:
    return next(p for p in panels(dashboard) if p["id"] == panel_id)


def metas_with_panels():
    dashes = {d["uid"]: d for d in built()[0].values()}
    return [(m, panel_by_id(dashes[m.dashboard], m.panel_id)) for m in built()[1]]


# ---------------------------------------------------------------- provisioning


def test_datasource_points_at_the_default_prometheus_address():
    cfg = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    prom = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    prom_target = next(j for j in prom["scrape_configs"] if j["job_name"] == "prometheus")
    assert [d["url"] for d in cfg["datasources"]] == [
        f"http://{prom_target['static_configs'][0]['targets'][0]}"]
    assert datasource_uids() == {parts.PROVISIONED_DATASOURCE}


def test_dashboard_provider_loads_the_dashboards_directory():
    cfg = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())
    assert [p["options"]["path"] for p in cfg["providers"]] == ["/var/lib/grafana/dashboards"]


def test_one_dashboard_per_question_is_provisioned():
    """Every JSON in grafana/dashboards/ is provisioned (docker-compose mounts the directory)
    and generated: none is kept by hand."""
    found = set(committed())
    assert found == QUESTIONS == GENERATED, "a dashboard no module of grafana/boards/ builds"
    for name, dash in committed().items():
        assert parts.TAG in dash["tags"], f"{name} is missing from the navigation"


# ---------------------------------------------------------------- generated and typed


def test_committed_dashboards_and_layout_pictures_are_the_generated_ones():
    """Edit grafana/boards/ (or the rules, params.yaml, docs/runbook.md they read), then
    run `.venv/bin/python -m grafana.generate`."""
    dashes, _ = built()
    for name, dash in dashes.items():
        assert committed()[name] == dash, f"{name} is stale: run python -m grafana.generate"
    doc = generate.MONITORING_DOC.read_text()
    assert layout.with_layouts(doc, dashes) == doc, "docs/monitoring.md layouts are stale"
    pictured = set(re.findall(r"<!-- layout: ([\w.-]+) -->", doc))
    assert pictured == set(dashes), "every generated dashboard has its picture"
    assert generate.main(["--check"]) == 0


@pytest.mark.parametrize("name", sorted(committed()))
def test_dashboard_goes_through_the_typed_models_without_loss(name):
    """grafana-foundation-sdk's Dashboard.from_json / to_json keep every key and value."""
    dash = committed()[name]
    round_trip = typed.typed_round_trip(dash)
    assert typed.lost_in(dash, round_trip) == []
    assert round_trip == dash  # written as the typed models write it: a fixed point


def test_the_loss_check_catches_a_key_the_models_do_not_know():
    dash = committed()["drift.json"]
    broken = {**dash, "panels": [{**dash["panels"][1], "thresholdz": {}}, *dash["panels"][2:]]}
    assert typed.lost_in(broken, typed.typed_round_trip(broken)) == ["/panels[0]/thresholdz"]


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("name", sorted(committed()))
def test_dashboard_is_well_formed(name):
    dash = committed()[name]
    assert dash["uid"]
    assert dash["title"]
    all_panels = list(panels(dash))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] < pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] in ("row", "text"):
            continue
        assert panel["targets"], f"{panel['title']} has no query"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].strip()


@pytest.mark.parametrize("name", sorted(committed()))
def test_datasource_is_a_variable_defaulting_to_the_provisioned_one(name):
    dash = committed()[name]
    datasource = variables(dash)["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    assert datasource["current"]["value"] in datasource_uids()


@pytest.mark.parametrize("name", sorted(committed()))
def test_every_variable_used_is_defined(name):
    dash = committed()[name]
    defined = set(variables(dash)) | set(BUILT_IN)
    texts = [t["expr"] for p in panels(dash) for t in p.get("targets", [])]
    texts += [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]
    texts += [p["title"] for p in panels(dash)]
    for text in texts:
        assert referenced(text) <= defined, f"{name}: undefined variable in {text!r}"
    for variable in variables(dash).values():
        if variable["type"] == "query":
            assert variable["query"].startswith("label_values(")


def test_generated_dashboards_filter_by_their_variables():
    """A variable that no query uses would be a dead control."""
    for name in GENERATED:
        dash = committed()[name]
        used = set().union(*(referenced(t["expr"]) for p in panels(dash)
                             for t in p.get("targets", [])))
        used |= set().union(*(referenced(p["title"]) for p in panels(dash)))
        for variable in variables(dash).values():
            if variable["type"] == "query":
                assert variable["name"] in used, f"{name}: ${variable['name']} unused"


# ---------------------------------------------------------------- metrics, units, thresholds


def recording_rules() -> set[str]:
    return {r["record"] for path in sorted((REPO / "prometheus" / "rules").glob("*.yml"))
            for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]
            if "record" in r}


def test_every_metric_a_dashboard_queries_is_documented_or_pending():
    known = set(CATALOGUE) | set(documented_metrics()) | recording_rules() | set(PENDING)
    known |= {"ALERTS", "scrape_duration_seconds", "process_resident_memory_bytes"}
    airflow_doc = (REPO / "docs" / "metrics.md").read_text().split("## Airflow metrics")[1]
    known |= set(re.findall(r"\| `(airflow_\w+)` \|", airflow_doc))
    for name in GENERATED:
        for panel in panels(committed()[name]):
            for target in panel.get("targets", []):
                unknown = metric_names(target["expr"]) - known
                assert not unknown, f"{name} / {panel['title']}: {unknown}"


CONCENTRATION = {"aq_model_mae", "aq_model_persistence_mae", "aq_realised_mae",
                 "aq_forecast_value", "aq_forecast_lower", "aq_forecast_upper",
                 "aq_observation_value"}
RATIO = {"aq_model_skill", "aq:model_skill:min_by_target", "aq_realised_skill",
         "aq:realised_skill:min_by_target", "aq_drift_share", "aq_ingest_null_fraction",
         "aq_model_interval_coverage", "aq_realised_interval_coverage",
         "aq_model_aqi_category_accuracy", "aq:step_quarantine_ratio",
         "aq_forecast_input_completeness", "aq:serving_errors:ratio_rate5m"}
DURATIONS = ("s", "dtdurations")


BURN_RATE = re.compile(r":ratio_rate\w+ / [\d.]+$")  # a ratio over its SLO budget: a multiple


def expected_unit(expr: str) -> tuple[str, ...] | None:
    names = metric_names(expr)
    if "_timestamp_seconds" in expr and "* 1000" in expr:
        return ("dateTimeAsIso",)
    if BURN_RATE.search(expr):
        return ("none",)
    if expr.startswith("rate(") and all(n.endswith("_seconds") for n in names):
        return ("percentunit",)  # seconds per second: CPU cores used
    if "time() -" in expr or any(n.endswith("_seconds") and "timestamp" not in n
                                 for n in names):
        return ("percentunit",) if " / " in expr else DURATIONS
    if " / " in expr or names & RATIO:
        return ("percentunit",)
    if names & CONCENTRATION:
        return ("conμgm3",)
    return None


def test_units_follow_the_metrics():
    """MAE and concentrations in ug/m3, skills and shares in %, durations in s, times as dates."""
    checked = 0
    for meta, panel in metas_with_panels():
        if panel["type"] == "table":
            continue  # per-column units, by override (checked by the table's own test below)
        for query in meta.queries.values():
            wanted = expected_unit(query.expr)
            if wanted is not None:
                unit = panel["fieldConfig"]["defaults"].get("unit")
                assert unit in wanted, f"{meta.title}: {query.expr} shown in {unit}"
                checked += 1
    assert checked >= 30


def test_table_columns_carry_units():
    for meta, panel in metas_with_panels():
        if panel["type"] != "table":
            continue
        organize = next((t for t in panel.get("transformations", [])
                         if t["id"] == "organize"), None)
        renames = organize["options"]["renameByName"] if organize else {}
        overrides = {o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
                     for o in panel["fieldConfig"]["overrides"]}
        for ref, query in meta.queries.items():
            wanted = expected_unit(query.expr)
            column = renames.get(f"Value #{ref}", renames.get("Value"))
            if wanted is None or column is None:
                continue
            assert overrides.get(column, {}).get("unit") in wanted, (meta.title, column)


def steps(panel: dict) -> list[float]:
    config = panel["fieldConfig"]["defaults"].get("thresholds") or {"steps": []}
    return [s["value"] for s in config["steps"] if s["value"] is not None]


def rule_constants(alert: str) -> list[tuple[str, float]]:
    """Comparisons with a constant in the alert's expression, read here independently."""
    expr = sources.alert_rules()[alert]["expr"]
    found = re.findall(r"(>=|<=|==|>|<)\s*(?:bool\s+)?([\d.]+(?:\s*\*\s*[\d.]+)*)", expr)
    return [(op, eval_product(text)) for op, text in found]


def eval_product(text: str) -> float:
    value = 1.0
    for factor in text.split("*"):
        value *= float(factor)
    return value


def test_thresholds_are_where_the_alerts_fire():
    """One source: each panel tied to an alert changes colour at the rule's own constant."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())["drift"]
    checked = set()
    for meta, panel in metas_with_panels():
        if not meta.alert:
            continue
        compared = [(op, v) for op, v in rule_constants(meta.alert) if op != "=="]
        if meta.alert == "ForecastAQIUnhealthy":  # AQI is an integer: "> 150" is ">= 151"
            assert compared[0][1] + 1 in steps(panel), meta.title
        elif meta.alert == "DriftDetected":  # the drift step compares with params.yaml
            assert steps(panel) == [params["share_threshold"]] or panel["fieldConfig"][
                "defaults"].get("mappings"), meta.title
        elif meta.alert == "PipelineStepStale":  # the rule compares with the staleness limit
            assert 1.0 in steps(panel), meta.title
        elif compared:
            assert compared[0][1] in steps(panel), f"{meta.title}: {steps(panel)} vs {compared}"
        else:  # a state (== 0): shown by value mappings
            assert panel["fieldConfig"]["defaults"].get("mappings"), meta.title
        checked.add(meta.alert)
    assert {"IngestionFreshnessLag", "QuarantineRatioHigh", "ModelSkillBelowPersistence",
            "RealisedAccuracyDegraded", "ChampionNotRefreshed", "DiskFilling", "MemoryPressure",
            "ForecastAQIUnhealthy", "PipelineStepFailing", "PipelineStepStale", "TargetDown",
            "DriftDetected", "ForecastWithheld"} <= checked


def test_serving_slos_are_the_settings_the_rules_and_the_load_test_use():
    """The serving dashboard's SLO lines and stale threshold are the serving settings' defaults
    (tests/prometheus/test_serving_rules.py ties the rules to the same defaults)."""
    from pipeline.settings import ServingSettings

    settings = ServingSettings()
    assert serving_board.SLO_LATENCY_S == settings.slo_latency_s
    assert serving_board.SLOW_BUDGET == pytest.approx(1 - settings.slo_latency_target)
    assert serving_board.ERROR_BUDGET == settings.slo_error_ratio
    assert serving_board.STALE_AFTER_S == settings.stale_after_s
    burn = {p["title"]: p for p in panels(committed()["serving.json"])}["Budget burn rates (1 h)"]
    assert steps(burn) == [6, 14.4]  # the ticket's and the page's burn rates in the rules


def test_drift_and_forecast_input_thresholds_are_params_yaml():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    drift = {p["title"]: p for p in panels(committed()["drift.json"])}
    for title in ("PSI per feature", "PSI over time (10 largest)"):
        assert steps(drift[title]) == [params["drift"]["psi_threshold"]]
    for title in ("Share of drifted features", "Share of drifted features over time"):
        assert steps(drift[title]) == [params["drift"]["share_threshold"]]
    forecasts = {p["title"]: p for p in panels(committed()["forecasts.json"])}
    limits = params["forecast"]
    assert steps(forecasts["Input completeness"]) == [limits["min_input_completeness"]]
    table = forecasts["Latest observation and forecast by location"]
    hours = next(o for o in table["fieldConfig"]["overrides"]
                 if o["matcher"]["options"] == "h since observed at issue")
    limit = next(p["value"] for p in hours["properties"] if p["id"] == "thresholds")
    assert [s["value"] for s in limit["steps"]][1:] == [limits["max_hours_since_observation"]]


def test_aqi_bands_are_pipeline_core_aqi():
    """Concentration bands per pollutant and the AQI bands come from pipeline/core/aqi.py."""
    forecast = committed()["forecasts.json"]
    by_title = {p["title"]: p for p in panels(forecast)}
    overrides = by_title["Forecast $horizon h ahead against the observation"]["fieldConfig"][
        "overrides"]
    bands = {o["matcher"]["options"]: [s["value"] for s in o["properties"][0]["value"]["steps"]]
             for o in overrides if o["properties"][0]["id"] == "thresholds"}
    for target in ("pm2_5", "pm10", "no2", "o3", "so2", "co"):
        expected = [round(v, 1) for v in category_thresholds(target).values()]
        assert bands[f"^{target} .*"] == [None, *expected], target
    assert steps(by_title["Highest forecast AQI in the next 24 h"]) == [51, 101, 151, 201, 301]


# ---------------------------------------------------------------- links


def all_links(dash: dict) -> list[tuple[str, dict]]:
    """(where, link) of dashboard links, panel links and data links (defaults and overrides)."""
    out = [("dashboard", link) for link in dash["links"]]
    for panel in panels(dash):
        out += [(panel["title"], link) for link in panel.get("links", [])]
        config = panel.get("fieldConfig", {})
        out += [(panel["title"], link) for link in config.get("defaults", {}).get("links", [])]
        for override in config.get("overrides", []):
            for prop in override["properties"]:
                if prop["id"] == "links":
                    out += [(panel["title"], link) for link in prop["value"]]
    return out


@cache
def airflow_ui_routes() -> set[tuple[str, ...]]:
    """The route patterns of the installed Airflow UI (its React router, in the bundle)."""
    import airflow

    assets = Path(airflow.__file__).parent / "ui" / "dist" / "assets"
    routes = set()
    for bundle in assets.glob("index-*.js"):
        routes |= {tuple(r.split("/")) for r in re.findall(r"path:`([a-z_/:A-Za-z]+)`",
                                                            bundle.read_text(errors="ignore"))}
    assert ("dags", ":dagId") in routes, "Airflow UI routes not found in its bundle"
    return routes


def airflow_route_exists(path: str) -> bool:
    if path in ("", "/"):
        return True  # the UI's home
    segments = tuple(re.sub(r"\$\{__[^}]+\}", ":value", path).strip("/").split("/"))
    for route in airflow_ui_routes():
        if len(route) == len(segments) and all(
                r == s or (r.startswith(":") and s == ":value") for r, s in zip(route, segments,
                                                                                 strict=True)):
            return True
    return False


def test_every_link_resolves():
    """To a dashboard (and panel) that exists, an Airflow UI route, or a Prometheus page."""
    dashes = {d["uid"]: d for d in committed().values()}
    for name, dash in committed().items():
        for where, link in all_links(dash):
            url = link.get("url", "")
            if link.get("type") == "dashboards":
                assert all(link["tags"][0] in d["tags"] for d in committed().values())
            elif url.startswith("/d/"):
                parsed = urllib.parse.urlparse(url)
                uid = parsed.path.split("/")[2]
                assert uid in dashes, f"{name} / {where}: no dashboard {uid}"
                view = urllib.parse.parse_qs(parsed.query).get("viewPanel")
                if view:
                    assert panel_by_id(dashes[uid], int(view[0])), (name, where, url)
            elif url.startswith("${airflow_url}"):
                assert airflow_route_exists(url.removeprefix("${airflow_url}")), (name, url)
            elif url.startswith("${prometheus_url}"):
                assert url.removeprefix("${prometheus_url}") in PROMETHEUS_PAGES, (name, url)
            elif url.startswith("${runbook_url}"):
                fragment = url.removeprefix("${runbook_url}").removeprefix("#")
                assert fragment == "" or fragment in runbook_anchors(), (name, url)
            else:
                pytest.fail(f"{name} / {where}: link {url!r} is of no known kind")


def runbook_anchors() -> set[str]:
    """The ids of the runbook page the local stack serves (stack/runbook.py)."""
    return set(re.findall(r' id="([^"]+)"', runbook.page().decode()))


def test_url_constants_are_the_local_stacks_addresses():
    ports = Ports()
    for name in GENERATED:
        defined = variables(committed()[name])
        assert defined["airflow_url"]["query"] == ports.url("airflow")
        assert defined["prometheus_url"]["query"] == ports.url("prometheus")
        assert defined["runbook_url"]["query"] == runbook.DEFAULT_BASE


def test_panels_tied_to_an_alert_link_to_the_alerts_own_runbook_url():
    """One source: the link is the rule's runbook_url, on the runbook_url constant."""
    linked = set()
    for meta, panel in metas_with_panels():
        if meta.alert:
            rule_url = sources.alert_rules()[meta.alert]["annotations"]["runbook_url"]
            base, _, fragment = rule_url.partition("#")
            assert base == runbook.DEFAULT_BASE
            assert fragment in runbook_anchors(), meta.alert
            urls = [link["url"] for link in panel.get("links", [])]
            assert "${runbook_url}#" + fragment in urls, meta.title
            linked.add(meta.alert)
    assert len(linked) >= 12


# ---------------------------------------------------------------- empty by design


def test_panels_empty_by_design_say_why():
    for meta, panel in metas_with_panels():
        if any(q.empty_ok for q in meta.queries.values()):
            hint = panel["fieldConfig"]["defaults"].get("noValue", "")
            assert len(hint) > 20, f"{meta.title} may be empty but does not say why"


# ---------------------------------------------------------------- PromQL syntax


@pytest.mark.process
def test_every_query_is_valid_promql(tmp_path):
    """promtool parses every panel query and annotation, variables expanded (no Prometheus)."""
    import shutil
    import subprocess

    rules = []
    for name, dash in sorted(committed().items()):
        values = {**BUILT_IN, **{v: "1" for v in variables(dash)}}
        exprs = [t["expr"] for p in panels(dash) for t in p.get("targets", [])]
        exprs += [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]
        rules += [{"record": f"dashboard:{name.removesuffix('.json').replace('-', '_')}:{i}",
                   "expr": expand(expr, values)} for i, expr in enumerate(exprs)]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool not installed: run `make setup`"
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(rules) > 80
