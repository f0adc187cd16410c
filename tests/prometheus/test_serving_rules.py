"""The serving SLO rules use the thresholds of the serving settings and the app's real labels."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pipeline.settings import ServingSettings
from serving.metrics import LATENCY_BUCKETS

RULES = Path(__file__).resolve().parents[2] / "prometheus" / "rules" / "serving.yml"


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_slo_thresholds_equal_the_settings_the_load_test_gates_on():
    settings = ServingSettings()
    text = RULES.read_text()
    assert settings.slo_latency_s in LATENCY_BUCKETS  # the SLO bound is a histogram bucket
    assert set(re.findall(r'le="([0-9.]+)"', text)) == {str(settings.slo_latency_s)}
    budgets = {(r["alert"], r["labels"]["window"]): r["expr"] for r in rules()
               if r.get("alert", "").endswith("BudgetBurn")}
    error_budget, slow_budget = settings.slo_error_ratio, 1 - settings.slo_latency_target
    for window, burn in (("1h", 14.4), ("6h", 6)):
        assert f"({burn} * {error_budget})" in budgets[("ServingErrorBudgetBurn", window)]
        assert f"({burn} * {slow_budget:.2g})" in budgets[("ServingLatencyBudgetBurn", window)]


def test_slo_rules_read_only_the_v1_endpoints_the_app_registers():
    """The exporter labels requests by endpoint (serving/metrics.py: the view's name without
    its blueprint): the labels of the /v1 blueprint's views are what the rules select."""
    from types import SimpleNamespace

    from flask import Flask

    from serving import api, metrics

    app = Flask("labels")
    app.register_blueprint(api.blueprint)
    v1 = {metrics.endpoint(SimpleNamespace(endpoint=rule.endpoint))
          for rule in app.url_map.iter_rules() if rule.rule.startswith("/v1/")}
    assert v1 == {"v1_locations", "v1_forecasts_get", "v1_forecasts_post"}
    assert all(re.fullmatch("v1_.*", label) for label in v1)
    for rule in rules():
        if "flask_http_request_duration_seconds" in rule["expr"]:
            assert 'endpoint=~"v1_.*"' in rule["expr"], rule.get("record") or rule["alert"]
