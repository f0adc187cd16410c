"""What the dashboards take from elsewhere, read in one place: the alert rules
(prometheus/rules/*.yml: thresholds, runbook links), params.yaml (drift and forecast-input
limits) and pipeline/core/aqi.py (AQI categories). A dashboard never repeats one of these
constants: after changing a source, regenerate (``python -m grafana.generate``).
"""

from __future__ import annotations

import ast
import operator
import re
from functools import cache
from pathlib import Path

import yaml

from grafana.board import Json, thresholds
from pipeline.core.aqi import aqi, category_thresholds
from pipeline.settings import Ports

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "prometheus" / "rules"
PARAMS = REPO / "params.yaml"

POLLUTANTS = ("pm2_5", "pm10", "no2", "o3", "so2", "co")  # the ones with AQI breakpoints
AQI_COLORS = ("green", "yellow", "orange", "red", "purple", "#7E0023")  # EPA category colours


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
    if base != Ports().runbook_base() or not anchor:
        raise ValueError(f"alert {alert}: runbook_url {url} is not {Ports().runbook_base()}#...")
    return "${runbook_url}#" + anchor


def burn_rates(alert: str, budget: float) -> list[float]:
    """The burn-rate factors of an SLO alert's rules (each window is its own rule under the
    same name), lowest first: the first constant of each over the budget it burns."""
    exprs = [r["expr"] for path in sorted(RULES.glob("*.yml"))
             for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]
             if r.get("alert") == alert]
    if not exprs:
        raise ValueError(f"no alert rule {alert}")
    found = [_COMPARISON.findall(e.replace("(", " ").replace(")", " ")) for e in exprs]
    return sorted(round(_number(f[0][1]) / budget, 6) for f in found)
