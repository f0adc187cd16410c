"""Backfill a long [start, end) range in provider-sized chunks, resumably.

Chunks run in time order through the same fetch -> validate -> store path as ``ingest``
(:class:`pipeline.ingestion.Ingestion`), one log line each. After each chunk the locations it
stored are recorded in a state file under ``build/ingest_state``, so a re-run after a crash, a
quota stop or a failed location redoes only what is missing.
"""

from __future__ import annotations

from pipeline.context import Context
from pipeline.ingestion import Ingestion, IngestReport


def run(ctx: Context, start=None, end=None, locations=None, chunk_days: int | None = None,
        progress: bool | None = None) -> IngestReport:
    return Ingestion(ctx).backfill(start, end, locations, chunk_days=chunk_days,
                                   progress=progress)
