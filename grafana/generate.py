"""The dashboards as code: ``.venv/bin/python -m grafana.generate`` writes grafana/dashboards/.

One dashboard per question, a module each in grafana/boards/ (pipeline health, model quality,
forecasts, drift, Airflow, serving), cross-linked (tag ``aq``), built from the grid of
grafana/board.py and the shared parts of grafana/parts.py. A panel tied to an alert links to
the alert's own ``runbook_url`` (the runbook page the local stack serves).

Thresholds come from their one source (grafana/sources.py): the alert rules
(prometheus/rules/*.yml), params.yaml (drift, forecast inputs) and pipeline/core/aqi.py (AQI
categories); the layout pictures in docs/monitoring.md are drawn from the generated JSON.
Every dashboard goes through the typed models of grafana-foundation-sdk (Grafana 10.4, the
docker-compose image) and generation fails if they would drop anything. ``--check`` compares
instead of writing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana.board import Json, PanelMeta
from grafana.boards import BOARDS, file_name
from grafana.layout import with_layouts
from grafana.typed import lost_in, typed_round_trip

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "grafana" / "dashboards"
MONITORING_DOC = REPO / "docs" / "monitoring.md"


def build() -> tuple[dict[str, Json], list[PanelMeta]]:
    """{file name: dashboard JSON} of every dashboard, and what the checks need."""
    out, meta = {}, []
    for builder in BOARDS:
        b = builder()
        raw = b.json()
        typed = typed_round_trip(raw)
        lost = lost_in(raw, typed)
        if lost:
            raise ValueError(f"{b.uid}: grafana-foundation-sdk's models drop {lost[:10]}")
        out[file_name(b.uid)] = typed
        meta.extend(b.meta)
    return out, meta


def render(dashboard: Json) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="only compare with the committed files; exit 1 if they differ")
    args = parser.parse_args(argv)
    dashboards, _ = build()
    wanted = {DASHBOARDS / name: render(d) for name, d in dashboards.items()}
    wanted[MONITORING_DOC] = with_layouts(MONITORING_DOC.read_text(), dashboards)
    unknown = sorted(p.name for p in DASHBOARDS.glob("*.json") if p not in wanted)
    if unknown:
        print(f"not generated (add a module to grafana/boards/ or remove): {unknown}",
              file=sys.stderr)
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(REPO)}", file=sys.stderr)
        return 1 if stale or unknown else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(REPO)}")
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main())
