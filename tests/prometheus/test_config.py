"""The committed Prometheus/Alertmanager configs: valid for the real tools, every alert tested.

promtool and amtool are the Debian binaries the stack runs (scripts/setup.sh installs them).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.settings import Ports
from stack import monitoring, runbook

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "prometheus"
RUNBOOK = REPO / "docs" / "runbook.md"
REQUIRED_ANNOTATIONS = {"summary", "description", "runbook_url"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not installed: run `make setup` (scripts/setup.sh)")
    return path


def run(cmd: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def alert_rules() -> list[dict]:
    rules = []
    for path in sorted((PROM / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [r for r in group["rules"] if "alert" in r]
    return rules


def unit_tests() -> list[dict]:
    cases = []
    for path in sorted((PROM / "tests").glob("*.yml")):
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases += test.get("alert_rule_test", [])
    return cases


@pytest.mark.process
def test_promtool_check_config():
    run([tool("promtool"), "check", "config", str(PROM / "prometheus.yml")])


@pytest.mark.process
def test_promtool_check_rules():
    files = sorted(str(p) for p in (PROM / "rules").glob("*.yml"))
    assert files
    out = run([tool("promtool"), "check", "rules", *files]).stdout
    assert out.count("SUCCESS") == len(files)


@pytest.mark.process
def test_promtool_unit_tests_pass():
    files = sorted(p.name for p in (PROM / "tests").glob("*.yml"))
    assert files
    run([tool("promtool"), "test", "rules", *files], cwd=PROM / "tests")


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    names = {r["alert"] for r in alert_rules()}
    fires = {c["alertname"] for c in unit_tests() if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in unit_tests() if not c.get("exp_alerts")}
    assert names - fires == set(), "alerts without a unit test where they fire"
    assert names - quiet == set(), "alerts without a unit test where they do not fire"
    assert (fires | quiet) - names == set(), "unit tests of alerts that do not exist"


def test_every_alert_has_severity_annotations_and_a_runbook_section():
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", m.group(1).strip().lower()).replace(" ", "-")
        for m in re.finditer(r"^## (.+)$", RUNBOOK.read_text(), flags=re.M)
    }
    for rule in alert_rules():
        assert rule["labels"].get("severity") in {"critical", "warning"}, rule["alert"]
        assert rule["labels"].get("category") in {"pipeline", "model", "infra", "air_quality",
                                                  "serving"}
        assert REQUIRED_ANNOTATIONS <= set(rule["annotations"]), rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url == f"{runbook.DEFAULT_BASE}#{rule['alert'].lower()}", url
        assert url.split("#")[1] in anchors, f"no runbook section for {rule['alert']}"


@pytest.mark.process
def test_amtool_check_config():
    run([tool("amtool"), "check-config", str(PROM / "alertmanager.yml")])


@pytest.mark.process
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=PipelineStepFailing", "severity=critical", "category=pipeline"], "critical"),
        (["alertname=DriftDetected", "severity=warning", "category=model"], "warning"),
        # a location without forecasts is an operational fault, not the air-quality alert
        (["alertname=ForecastWithheld", "severity=warning", "category=pipeline",
          "location=delhi"], "warning"),
        (["alertname=ForecastAQIUnhealthy", "severity=warning", "category=air_quality"],
         "air-quality"),
        # an old forecast is the pipeline's problem, never the air-quality receiver's
        (["alertname=ForecastStale", "severity=warning", "category=pipeline",
          "location=delhi"], "warning"),
        (["alertname=Unknown"], "default"),
    ],
)
def test_alertmanager_routes_by_severity_and_category(labels, receiver):
    out = run([tool("amtool"), "config", "routes", "test",
               f"--config.file={PROM / 'alertmanager.yml'}", *labels]).stdout
    assert out.strip() == receiver


@pytest.mark.process
def test_rendered_configs_differ_only_in_addresses(tmp_path):
    """The runtime copies the local stack writes for other ports pass the same checks."""
    committed = yaml.safe_load((PROM / "prometheus.yml").read_text())
    ports = Ports(prometheus=19090, pushgateway=19091, alertmanager=19093, webhook=19095,
                  node_exporter=19100, serving=18000, serving_proxy_metrics=13903,
                  airflow=18080)
    rendered = monitoring.render_prometheus(committed, ports)
    targets = [t for job in rendered["scrape_configs"] for s in job["static_configs"]
               for t in s["targets"]]
    assert sorted(targets) == sorted(
        f"127.0.0.1:{p}" for p in (19090, 19091, 19093, 19100, 18000, 13903, 18080))

    def strip(cfg):
        for job in cfg["scrape_configs"]:
            job["static_configs"] = []
        cfg["alerting"]["alertmanagers"][0]["static_configs"] = []
        return cfg

    assert strip(rendered) == strip(yaml.safe_load((PROM / "prometheus.yml").read_text()))
    am = monitoring.render_alertmanager(
        yaml.safe_load((PROM / "alertmanager.yml").read_text()), ports)
    urls = [h["url"] for r in am["receivers"] for h in r["webhook_configs"]]
    assert urls
    assert all(u.startswith("http://127.0.0.1:19095/") for u in urls)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(
        monitoring.render_prometheus(committed, ports, fast=True)))
    (tmp_path / "rules").symlink_to(PROM / "rules")
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(
        monitoring.render_alertmanager(
            yaml.safe_load((PROM / "alertmanager.yml").read_text()), ports, fast=True)))
    run([tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")])
    run([tool("amtool"), "check-config", str(tmp_path / "alertmanager.yml")])


def test_default_ports_render_the_committed_addresses():
    committed = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert monitoring.render_prometheus(committed, Ports()) == committed
    am = yaml.safe_load((PROM / "alertmanager.yml").read_text())
    assert monitoring.render_alertmanager(am, Ports()) == am


def test_the_air_quality_alert_names_the_category_aqi_py_gives_the_value():
    """The summary's category thresholds are pipeline/core/aqi.py's (AQI 500 is Hazardous)."""
    from pipeline.core.aqi import CATEGORIES, CATEGORY_UPPER_AQI

    rule = next(r for r in alert_rules() if r["alert"] == "ForecastAQIUnhealthy")
    template = rule["annotations"]["summary"]
    found = re.findall(r"gt \$value ([0-9.]+) \}\}([A-Za-z ]+)\{\{", template)
    found += re.findall(r"else \}\}([A-Za-z ]+)\{\{ end", template)
    upper = dict(zip(CATEGORIES, CATEGORY_UPPER_AQI, strict=True))
    assert found == [(str(float(upper["very_unhealthy"])), "Hazardous"),
                     (str(float(upper["unhealthy"])), "Very Unhealthy"), "Unhealthy"]
    assert float(re.search(r"> (\d+)", rule["expr"]).group(1)) == upper[
        "unhealthy_for_sensitive_groups"]


def test_the_air_quality_alert_considers_only_fresh_forecasts():
    rule = next(r for r in alert_rules() if r["alert"] == "ForecastAQIUnhealthy")
    assert "aq_forecast_issue_timestamp_seconds" in rule["expr"]
    assert "aq:forecast_max_age_seconds" in rule["expr"]
