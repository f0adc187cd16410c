"""Read the Grafana dashboards and run their queries as Grafana would (static and live tests).

Grafana cannot run here, so the checks do its part: expand the template variables
(each variable to each of its values, the others at "All" or their first value; a
repeated row's variable is always one value), evaluate each query in Prometheus, and
tell apart "no data" that is a bug from "no data" the panel declares and explains.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from grafana.board import PanelMeta, Query
from pipeline.io.metrics import CATALOGUE
from tests.monitoring import http_json

DASHBOARDS = Path(__file__).resolve().parents[1] / "grafana" / "dashboards"

# Grafana's own variables, at what a 24 h dashboard would give them
BUILT_IN = {"__interval_ms": "60000", "__interval": "1m", "__rate_interval": "1m",
            "__range": "24h"}
# metrics dashboards show before the work that emits them lands (issue 13: the lead)
PENDING: dict[str, str] = {}
# metrics that exist only in some states (docs/metrics.md says when)
SOMETIMES = {"airflow_dag_run_duration": "only while a DAG run is running"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
                "group_right", "offset", "inf", "nan"}


def dashboards() -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in sorted(DASHBOARDS.glob("*.json"))]


def panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep theirs inside


def queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every query of every panel."""
    return [(path.name, panel["title"], target["expr"])
            for path, dash in dashboards() for panel in panels(dash)
            for target in panel.get("targets", [])]


# ---------------------------------------------------------------- variables

VARIABLE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)")


def variables(dashboard: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def referenced(text: str) -> set[str]:
    return {a or b for a, b in VARIABLE.findall(text)}


def expand(text: str, values: dict[str, str]) -> str:
    """Replace ``$name``, ``${name}`` and ``${name:format}`` of the variables given."""

    def one(match: re.Match) -> str:
        name = match[1] or match[2]
        return values.get(name, match[0])

    return VARIABLE.sub(one, text)


def label_values(prometheus: str, query: str) -> list[str]:
    """What Grafana lists for ``label_values(selector, label)``."""
    found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
    assert found, f"unsupported variable query {query!r}"
    selector, label = found[1], found[2]
    url = f"{prometheus}/api/v1/series?" + urllib.parse.urlencode({"match[]": selector})
    series = http_json(url)["data"]
    return sorted({s[label] for s in series if label in s})


def variable_values(prometheus: str, variable: dict) -> list[str]:
    if variable["type"] == "query":
        values = label_values(prometheus, variable["query"])
        if variable.get("sort") == 3:
            values.sort(key=float)
        return values
    if variable["type"] == "constant":
        return [variable["query"]]
    raise AssertionError(f"variable {variable['name']} of type {variable['type']} unchecked")


def assignments(used: set[str], dashboard: dict, prometheus: str,
                repeat: str | None) -> list[dict[str, str]]:
    """Each used variable at each of its values, the others at All (or their first value)."""
    defs = variables(dashboard)
    values = {name: variable_values(prometheus, defs[name]) for name in sorted(used)}
    for name, listed in values.items():
        assert listed, f"variable {name} lists no values: {defs[name]['query']}"
    baseline = {name: (defs[name]["allValue"] if defs[name].get("includeAll")
                       and name != repeat else listed[0])
                for name, listed in values.items()}
    out = [baseline]
    for name, listed in values.items():
        out += [{**baseline, name: value} for value in listed if value != baseline[name]]
    return out


# ---------------------------------------------------------------- metric names


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (label matchers, groupings, functions out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\boffset\s+\S+", " ", text)  # offset 1h, offset ${horizon}h
    text = re.sub(r"\$\{\w+\}|\$\w+", " ", text)  # unexpanded variables
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        word = match[0]
        rest = text[match.end():].lstrip()
        if word.lower() in PROMQL_WORDS or rest.startswith("("):
            continue
        names.add(word)
    return names


def declared_absent(name: str) -> str | None:
    """Why a metric may be missing from Prometheus, if it may."""
    if name in PENDING:
        return PENDING[name]
    if name in SOMETIMES:
        return SOMETIMES[name]
    spec = CATALOGUE.get(name)
    return spec.optional if spec is not None and spec.optional else None


# ---------------------------------------------------------------- running queries


@dataclass
class Prometheus:
    url: str
    since: float  # range queries start here (when the data began)

    def _api(self, path: str, params: dict[str, str]) -> list[dict]:
        url = f"{self.url}{path}?" + urllib.parse.urlencode(params)
        try:
            body = http_json(url)
        except urllib.error.HTTPError as exc:  # a PromQL error: say which query and why
            raise AssertionError(f"{params['query']!r}: {exc.read().decode()[:500]}") from exc
        assert body.get("status") == "success", f"{params['query']!r}: {body}"
        return body["data"]["result"]

    def instant(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._api("/api/v1/query", params)

    def range(self, expr: str, step: str = "5s") -> list[dict]:
        return self._api("/api/v1/query_range", {
            "query": expr, "start": f"{self.since:.3f}", "end": f"{time.time():.3f}",
            "step": step})

    def names(self) -> set[str]:
        return set(http_json(f"{self.url}/api/v1/label/__name__/values")["data"])

    def has_data(self, expr: str, query: Query) -> bool:
        """As a panel shows it: now (an ``offset Nh`` query at the time it is drawn for, N h
        from now), else, for a range query, anywhere since the data began."""
        shift = re.search(r"\boffset\s+(\d+)h\b", expr)
        at = time.time() + 3600 * int(shift[1]) if shift else None
        if self.instant(expr, at):
            return True
        return not query.instant and not shift and bool(self.range(expr))


def empty_allowed(query: Query, assignment: dict[str, str]) -> bool:
    if query.empty_ok == "always":
        return True
    if isinstance(query.empty_ok, dict):
        return any(assignment.get(name) in values for name, values in query.empty_ok.items())
    return False


def check_panel(meta: PanelMeta, dashboard: dict, prom: Prometheus,
                present: set[str]) -> list[str]:
    """Problems of one panel against live data: every query, every variable value."""
    problems = []
    for ref, query in meta.queries.items():
        used = referenced(query.expr) & set(variables(dashboard))
        for assignment in assignments(used, dashboard, prom.url, meta.repeat):
            expr = expand(query.expr, {**BUILT_IN, **assignment})
            if prom.has_data(expr, query):
                continue
            if not empty_allowed(query, assignment):
                problems.append(f"{meta.title} [{ref}] {assignment}: no data from {expr}")
                continue
            for name in metric_names(expr) - present:
                if not declared_absent(name):
                    problems.append(f"{meta.title} [{ref}]: {name} is in no Prometheus series "
                                    "and not declared optional or pending")
    return problems


def check_annotation(annotation: dict, dashboard: dict, prom: Prometheus) -> list[str]:
    """A Prometheus annotation marks an event where its expression is > 0 (as Grafana reads it)."""
    used = referenced(annotation["expr"]) & set(variables(dashboard))
    values = assignments(used, dashboard, prom.url, None)[0] if used else {}
    expr = expand(annotation["expr"], {**BUILT_IN, **values})
    series = prom.range(expr, step="1s")
    if not any(float(v) > 0 for s in series for _, v in s["values"]):
        return [f"annotation {annotation['name']!r}: {expr} marks nothing"]
    return []
