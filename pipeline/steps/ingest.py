"""Ingest one [start, end) window for the configured source (default: ``source.start/end``).

The work is :class:`pipeline.ingestion.Ingestion`: idempotent (re-ingesting a window leaves
the same files), partial-failure safe (one failing location does not lose the others; the run
still fails at the end) and it never overwrites stored data with a failed or empty response.
"""

from __future__ import annotations

from pipeline.context import Context
from pipeline.ingestion import Ingestion, IngestReport


def run(ctx: Context, start=None, end=None, locations=None) -> IngestReport:
    return Ingestion(ctx).window(start, end, locations)
