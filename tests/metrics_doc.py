"""Read the metric tables of docs/metrics.md (shared by the catalogue and integration tests)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
PIPELINE_SECTION = "Pipeline metrics"
SCRAPED_SECTION = "Scraped metrics the rules use"


@dataclass(frozen=True)
class DocumentedMetric:
    name: str
    kind: str
    labels: tuple[str, ...]
    section: str


def documented_metrics(doc: Path = DOC) -> dict[str, DocumentedMetric]:
    """Rows of every ``| Name | Type | Labels | ...`` table, keyed by metric name."""
    out: dict[str, DocumentedMetric] = {}
    section = ""
    for line in doc.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5:  # the recording-rule table has no type column
            continue
        name = cells[0].strip("`")
        labels = tuple(re.findall(r"`([^`]+)`", cells[2]))
        if name in out:
            raise AssertionError(f"{name} documented twice in {doc}")
        out[name] = DocumentedMetric(name, cells[1], labels, section)
    return out
