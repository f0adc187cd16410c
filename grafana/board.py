"""Building blocks of the dashboards: a grid that places panels, and panel/query helpers.

Everything here returns plain Grafana dashboard JSON (schema of Grafana 10.4, the
docker-compose image); ``grafana/generate.py`` passes every dashboard through the typed
models of ``grafana-foundation-sdk`` and refuses any key they would drop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Json = dict[str, Any]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24

# "always": the query may return nothing in any state (e.g. a metric of a later issue,
# nothing queued); {variable: values}: only when a variable holds one of these values
EmptyOk = Literal["always"] | dict[str, tuple[str, ...]] | None


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str | None = None
    instant: bool = False  # instant (tables, "now" gauges) or a range over the time picker
    table: bool = False  # format=table: labels become columns
    empty_ok: EmptyOk = None  # when no data is by design; the panel then needs a hint

    def json(self, ref: str) -> Json:
        out: Json = {"refId": ref, "datasource": DATASOURCE, "expr": self.expr,
                     "range": not self.instant, "instant": self.instant}
        if self.legend is not None:
            out["legendFormat"] = self.legend
        if self.table:
            out["format"] = "table"
        return out


def thresholds(base: str, *steps: tuple[float, str]) -> Json:
    """Absolute thresholds: ``base`` colour below the first step, then each step's colour."""
    return {"mode": "absolute", "steps": [{"color": base, "value": None},
                                          *({"color": c, "value": v} for v, c in steps)]}


def value_map(*entries: tuple[str, str, str]) -> list[Json]:
    """Value mappings: (raw value, text shown, colour)."""
    return [{"type": "value", "options": {
        value: {"text": text, "color": color, "index": i}
        for i, (value, text, color) in enumerate(entries)}}]


OUTCOME = value_map(("1", "ok", "green"), ("0", "failed", "red"))
UP = value_map(("1", "up", "green"), ("0", "down", "red"))


def link(title: str, url: str, *, blank: bool = False, keep_time: bool = False) -> Json:
    out: Json = {"title": title, "url": url}
    if blank:
        out["targetBlank"] = True
    if keep_time:
        out["keepTime"] = True
    return out


@dataclass
class PanelMeta:
    """What the checks need to know about a panel beyond its JSON."""

    dashboard: str
    panel_id: int
    title: str
    queries: dict[str, Query]  # refId -> query
    alert: str | None
    repeat: str | None  # the variable of the row the panel is repeated in


@dataclass
class Board:
    """One dashboard: rows and panels laid out left to right on Grafana's 24-column grid."""

    uid: str
    title: str
    description: str
    tags: tuple[str, ...]
    variables: list[Json] = field(default_factory=list)
    annotations: list[Json] = field(default_factory=list)
    links: list[Json] = field(default_factory=list)
    panels: list[Json] = field(default_factory=list)
    meta: list[PanelMeta] = field(default_factory=list)
    refresh: str = "1m"
    time_from: str = "now-24h"  # the time picker's default range, up to now
    _x: int = 0
    _y: int = 0
    _line_height: int = 0
    _repeat: str | None = None

    def _next_id(self) -> int:
        return len(self.panels) + 1

    def _newline(self) -> None:
        self._y += self._line_height
        self._x, self._line_height = 0, 0

    def row(self, title: str, *, repeat: str | None = None) -> None:
        if self._x:
            self._newline()
        panel: Json = {"type": "row", "id": self._next_id(), "title": title,
                       "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": self._y}}
        if repeat:
            panel["repeat"] = repeat
        self.panels.append(panel)
        self._repeat = repeat
        self._y += 1

    def add(self, kind: str, title: str, queries: Iterable[Query], *, w: int, h: int = 8,
            description: str, unit: str | None = None, thresholds: Json | None = None,
            mappings: list[Json] | None = None, hint: str | None = None,
            decimals: int | None = None, min_value: float | None = None,
            max_value: float | None = None, custom: Json | None = None,
            overrides: list[Json] | None = None, options: Json | None = None,
            links: list[Json] | None = None, data_links: list[Json] | None = None,
            transformations: list[Json] | None = None, alert: str | None = None,
            color: Json | None = None) -> Json:
        """Place a panel; ``hint`` is what it says instead of "No data" (and why)."""
        if self._x + w > GRID_WIDTH:
            self._newline()
        queries = list(queries)
        refs = [chr(ord("A") + i) for i in range(len(queries))]
        if any(q.empty_ok for q in queries) and not hint:
            raise ValueError(f"{self.uid} / {title}: a query may be empty by design: say why")
        defaults: Json = {}
        for key, value in (("unit", unit), ("decimals", decimals), ("min", min_value),
                           ("max", max_value), ("thresholds", thresholds),
                           ("mappings", mappings), ("noValue", hint), ("links", data_links),
                           ("custom", custom), ("color", color)):
            if value is not None:
                defaults[key] = value
        panel: Json = {
            "type": kind, "id": self._next_id(), "title": title, "description": description,
            "datasource": DATASOURCE,
            "gridPos": {"h": h, "w": w, "x": self._x, "y": self._y},
            "targets": [q.json(ref) for ref, q in zip(refs, queries, strict=True)],
            "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
            "options": options or {},
        }
        if links:
            panel["links"] = links
        if transformations:
            panel["transformations"] = transformations
        self.panels.append(panel)
        self.meta.append(PanelMeta(self.uid, panel["id"], title, dict(zip(refs, queries,
                                                                            strict=True)),
                                   alert, self._repeat))
        self._x += w
        self._line_height = max(self._line_height, h)
        return panel

    def json(self) -> Json:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "timezone": "utc",
            "editable": False,
            "graphTooltip": 1,  # shared crosshair: the same moment on every panel
            "schemaVersion": 39,
            "version": 1,
            "refresh": self.refresh,
            "time": {"from": self.time_from, "to": "now"},
            "templating": {"list": self.variables},
            "annotations": {"list": self.annotations},
            "links": self.links,
            "panels": self.panels,
        }
