"""Grafana provisioning and dashboards: consistent files (queries run live in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.grafana_doc import dashboards, panels, queries

REPO = Path(__file__).resolve().parents[2]
PROVISIONING = REPO / "grafana" / "provisioning"


def datasource_uids() -> set[str]:
    cfg = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    return {d["uid"] for d in cfg["datasources"]}


def test_datasource_points_at_the_default_prometheus_address():
    cfg = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    prom = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    prom_target = next(j for j in prom["scrape_configs"] if j["job_name"] == "prometheus")
    assert [d["url"] for d in cfg["datasources"]] == [
        f"http://{prom_target['static_configs'][0]['targets'][0]}"]


def test_dashboard_provider_loads_the_dashboards_directory():
    cfg = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())
    assert [p["options"]["path"] for p in cfg["providers"]] == ["/var/lib/grafana/dashboards"]


def test_dashboards_are_well_formed():
    uids = datasource_uids()
    found = dashboards()
    assert [p.name for p, _ in found] == ["pipeline-health.json", "serving.json"]
    for path, dash in found:
        assert dash["uid"]
        ids = [p["id"] for p in panels(dash)]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in panels(dash):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in uids, panel["title"]
            assert panel["targets"], f"{panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in uids
                assert target["expr"].strip()
            pos = panel["gridPos"]
            assert 0 <= pos["x"] <= pos["x"] + pos["w"] <= 24, panel["title"]


def test_pipeline_health_comes_first():
    _, dash = dashboards()[0]
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows[0] == "Pipeline health"
    assert {"Ingestion", "Model", "Drift", "Forecast"} <= set(rows)
    assert len(queries()) >= 20
