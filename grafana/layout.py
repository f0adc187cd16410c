"""Text pictures of the dashboards' grids, redrawn into docs/monitoring.md's
``<!-- layout: file -->`` blocks."""

from __future__ import annotations

import re

from grafana.board import Json


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
            raise ValueError(f"layout block of unknown dashboard {name}")
        return f"{match[1]}\n{docs_block(name, dashboards[name])}\n{match[4]}"

    return BLOCK.sub(redraw, doc)
