"""Backfill a long [start, end) range in provider-sized chunks, resumably.

Chunks run in time order through the same fetch -> validate -> store path as
the ``ingest`` step. After each chunk the locations it stored are recorded in
a JSON state file under ``build/ingest_state`` (atomically), so a re-run after
a crash, a quota stop or a failed location redoes only what is missing. Writes
are idempotent merges, so redoing a chunk never duplicates or loses rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from pipeline.context import Context
from pipeline.core.quality import IngestQuality, freshness_lag
from pipeline.errors import IngestError
from pipeline.io.sources import SourceStats, make_source
from pipeline.io.sources.open_meteo import time_chunks
from pipeline.io.storage import atomic_write_json, newest_observation, read_json
from pipeline.schema import VALUE_COLUMNS
from pipeline.steps.ingest import push_quality, resolve_locations, resolve_window, store
from pipeline.timeutil import now_utc

log = logging.getLogger(__name__)

DEFAULT_CHUNK_DAYS = 31
STATE_VERSION = 1


@dataclass
class BackfillReport:
    source: str
    start: pd.Timestamp
    end: pd.Timestamp
    chunk_days: int
    state_path: Path
    chunks_total: int = 0
    chunks_fetched: int = 0
    chunks_skipped: int = 0
    rows_valid: int = 0
    rows_quarantined: int = 0
    failures: dict[str, dict[str, str]] = field(default_factory=dict)  # chunk -> loc -> error
    stats: SourceStats = field(default_factory=SourceStats)

    @property
    def ok(self) -> bool:
        return not self.failures


def chunk_id(start: pd.Timestamp, end: pd.Timestamp) -> str:
    return f"{start:%Y%m%dT%H}_{end:%Y%m%dT%H}"


def state_path(ctx: Context, source: str, start: pd.Timestamp, end: pd.Timestamp,
               chunk_days: int) -> Path:
    """One state file per source, range and chunk size (a different cut is a different plan)."""
    name = f"backfill_{source}_{chunk_id(start, end)}_{chunk_days}d.json"
    return ctx.paths.ingest_state_dir / name


def load_state(path: Path, source: str, start: pd.Timestamp, end: pd.Timestamp,
               chunk_days: int) -> dict:
    fresh = {"version": STATE_VERSION, "source": source, "start": start.isoformat(),
             "end": end.isoformat(), "chunk_days": chunk_days, "chunks": {}}
    if not path.exists():
        return fresh
    try:
        state = read_json(path)
    except ValueError as exc:
        raise IngestError(f"backfill state {path} is not valid JSON ({exc}); delete it to start "
                          "the backfill over (stored data is kept)") from None
    expected = {k: fresh[k] for k in ("source", "start", "end", "chunk_days")}
    found = {k: state.get(k) for k in expected}
    if found != expected or not isinstance(state.get("chunks"), dict):
        raise IngestError(f"backfill state {path} belongs to another plan ({found}); delete it")
    return state


def _resolve_chunk_days(requested: int | None, provider_limit: int | None) -> int:
    if requested is not None and requested < 1:
        raise IngestError(f"--chunk-days must be at least 1, got {requested}")
    days = requested or provider_limit or DEFAULT_CHUNK_DAYS
    if provider_limit and days > provider_limit:
        log.warning("chunk of %d days exceeds the provider limit of %d days per request: "
                    "using %d", days, provider_limit, provider_limit)
        days = provider_limit
    return days


def run(ctx: Context, start=None, end=None, locations=None, chunk_days: int | None = None,
        progress: bool | None = None) -> BackfillReport:
    """Backfill [start, end) (default: params.source.start/end); raises IngestError if any
    location of any chunk still failed after retries (the rest is stored and recorded)."""
    start_ts, end_ts = resolve_window(ctx, start, end)
    locs = resolve_locations(ctx, locations)
    with ctx.reporter.step("backfill") as metrics:
        source = make_source(ctx.params, ctx.settings, root=ctx.paths.root)
        days = _resolve_chunk_days(chunk_days, getattr(source, "max_days_per_request", None))
        path = state_path(ctx, source.name, start_ts, end_ts, days)
        state = load_state(path, source.name, start_ts, end_ts, days)
        chunks = time_chunks(start_ts, end_ts, days)
        report = BackfillReport(source.name, start_ts, end_ts, days, path,
                                chunks_total=len(chunks))
        rows = {loc.id: 0 for loc in locs}
        nulls = dict.fromkeys(VALUE_COLUMNS, 0)
        log.info("backfill %s: %s .. %s in %d chunk(s) of %d day(s), state %s", source.name,
                 start_ts, end_ts, len(chunks), days, path)
        # progress=None: a bar on a terminal, none in captured logs (Airflow, CI)
        bar = tqdm(chunks, desc=f"backfill {source.name}", unit="chunk",
                   disable=None if progress is None else not progress, dynamic_ncols=True)
        for chunk_start, chunk_end in bar:
            cid = chunk_id(chunk_start, chunk_end)
            entry = state["chunks"].setdefault(cid, {"done": [], "failed": {}})
            todo = [loc for loc in locs if loc.id not in set(entry["done"])]
            if not todo:
                report.chunks_skipped += 1
                continue
            result = source.fetch(todo, chunk_start, chunk_end)
            checked, _write, _quality = store(ctx, source.name, result, f"backfill_{cid}",
                                              [loc.id for loc in todo])
            report.chunks_fetched += 1
            report.stats.merge(result.stats)
            report.rows_valid += len(checked.valid)
            report.rows_quarantined += len(checked.quarantine)
            for loc_id, n in checked.valid.groupby("location_id").size().items():
                rows[str(loc_id)] = rows.get(str(loc_id), 0) + int(n)
            for col in VALUE_COLUMNS:
                nulls[col] += int(checked.valid[col].isna().sum())
            stored = [loc.id for loc in todo if loc.id not in result.failures]
            entry["done"] = sorted(set(entry["done"]) | set(stored))
            entry["failed"] = dict(sorted(result.failures.items()))
            entry["rows"] = entry.get("rows", 0) + len(checked.valid)
            entry["updated"] = now_utc().isoformat()
            atomic_write_json(path, state)
            if result.failures:
                report.failures[cid] = dict(result.failures)
            bar.set_postfix(rows=report.rows_valid, failed=len(report.failures))
        bar.close()

        failed_locations = {
            loc_id: f"{cid}: {err}" for cid, errs in report.failures.items()
            for loc_id, err in errs.items()
        }
        quality = IngestQuality(
            rows_per_location=rows,
            null_fraction={c: (nulls[c] / report.rows_valid if report.rows_valid else 1.0)
                           for c in VALUE_COLUMNS},
            freshness_lag_s=freshness_lag(
                {loc.id: newest_observation(ctx.paths.raw_dir, source.name, loc.id)
                 for loc in locs}, now_utc()),
            failures=failed_locations,
            quarantined=report.rows_quarantined,
        )
        metrics.rows(rows_in=report.rows_valid + report.rows_quarantined,
                     rows_out=report.rows_valid, quarantined=report.rows_quarantined)
        push_quality(metrics, quality, report.stats)
        log.info("backfill %s: %d chunk(s) fetched, %d already done, %d rows valid, "
                 "%d quarantined", source.name, report.chunks_fetched, report.chunks_skipped,
                 report.rows_valid, report.rows_quarantined)
        if report.failures:
            detail = "; ".join(
                f"{cid} {loc_id}: {err}" for cid, errs in sorted(report.failures.items())
                for loc_id, err in sorted(errs.items())
            )
            raise IngestError(
                f"backfill {source.name}: {len(report.failures)} of {len(chunks)} chunk(s) have "
                f"failed locations ({detail}); everything else is stored. Run the same command "
                f"again to retry only what failed (state: {path})"
            )
    return report
