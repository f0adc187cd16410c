"""Read the Grafana dashboards' panels and queries (shared by the static and live tests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parents[1] / "grafana" / "dashboards"


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
