"""Ingest one [start, end) window for the configured source: fetch, validate, store.

Idempotent (re-ingesting a window leaves the same files), partial-failure safe
(one failing location does not lose the others; the run still fails at the end),
and it never overwrites stored data with a failed or empty response.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from pipeline.context import Context
from pipeline.core.quality import IngestQuality, freshness_lag, null_fraction, rows_per_location
from pipeline.core.validation import validate
from pipeline.errors import IngestError
from pipeline.io.metrics import StepRun
from pipeline.io.sources import FetchResult, SourceStats, make_source
from pipeline.io.storage import WriteReport, append_quarantine, newest_observation, write_raw
from pipeline.timeutil import floor_hour, now_utc, utc

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    source: str
    start: pd.Timestamp
    end: pd.Timestamp
    write: WriteReport
    quality: IngestQuality
    stats: SourceStats = field(default_factory=SourceStats)

    @property
    def ok(self) -> bool:
        return not self.quality.failures


def resolve_window(ctx: Context, start, end) -> tuple[pd.Timestamp, pd.Timestamp]:
    start_ts = floor_hour(utc(start if start is not None else ctx.params.source.start))
    end_ts = floor_hour(utc(end if end is not None else ctx.params.source.end))
    if end_ts <= start_ts:
        raise IngestError(f"empty window: end {end_ts} is not after start {start_ts}")
    return start_ts, end_ts


def resolve_locations(ctx: Context, locations: str | Sequence[str] | None):
    if locations is None:
        return list(ctx.params.locations)
    wanted = locations.split(",") if isinstance(locations, str) else list(locations)
    known = {loc.id: loc for loc in ctx.params.locations}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise IngestError(f"unknown location id(s) {unknown}; params.yaml has {sorted(known)}")
    return [known[w] for w in wanted]


def push_quality(run: StepRun, quality: IngestQuality, stats: SourceStats) -> None:
    for loc, rows in quality.rows_per_location.items():
        run.set("aq_ingest_rows", rows, location=loc)
        run.set("aq_ingest_location_success", 0 if loc in quality.failures else 1, location=loc)
    for loc, lag in quality.freshness_lag_s.items():
        if lag != float("inf"):
            run.set("aq_ingest_freshness_lag_seconds", lag, location=loc)
    for var, frac in quality.null_fraction.items():
        run.set("aq_ingest_null_fraction", frac, variable=var)
    for provider, n in stats.requests.items():
        run.set("aq_ingest_requests", n, provider=provider)
        latencies = stats.latency_s.get(provider) or [0.0]
        run.set("aq_ingest_request_latency_seconds", sum(latencies) / len(latencies),
                provider=provider)
    for (provider, code), n in stats.responses.items():
        run.set("aq_ingest_http_responses", n, provider=provider, code=code)


def store(ctx: Context, source_name: str, result: FetchResult, window_id: str, location_ids):
    """Validate fetched rows, write the good ones, quarantine the rest; return quality."""
    checked = validate(result.frame, known_locations=ctx.params.location_ids)
    write = write_raw(ctx.paths.raw_dir, source_name, checked.valid)
    append_quarantine(ctx.paths.ingest_quarantine_dir, source_name, checked.quarantine, window_id)
    now = now_utc()
    quality = IngestQuality(
        rows_per_location=rows_per_location(checked.valid, location_ids),
        null_fraction=null_fraction(checked.valid),
        freshness_lag_s=freshness_lag(
            {loc: newest_observation(ctx.paths.raw_dir, source_name, loc) for loc in location_ids},
            now,
        ),
        failures=dict(result.failures),
        quarantined=len(checked.quarantine),
        quarantine_reasons=checked.reasons,
    )
    return checked, write, quality


def run(ctx: Context, start=None, end=None, locations=None) -> IngestReport:
    start_ts, end_ts = resolve_window(ctx, start, end)
    locs = resolve_locations(ctx, locations)
    location_ids = [loc.id for loc in locs]
    with ctx.reporter.step("ingest") as metrics:
        source = make_source(ctx.params, ctx.settings, root=ctx.paths.root)
        log.info("ingest %s: %s .. %s for %d location(s)", source.name, start_ts, end_ts, len(locs))
        result = source.fetch(locs, start_ts, end_ts)
        window_id = f"{start_ts:%Y%m%dT%H}_{end_ts:%Y%m%dT%H}"
        checked, write, quality = store(ctx, source.name, result, window_id, location_ids)
        metrics.rows(rows_in=len(result.frame), rows_out=len(checked.valid),
                     quarantined=len(checked.quarantine))
        push_quality(metrics, quality, result.stats)
        report = IngestReport(source.name, start_ts, end_ts, write, quality, result.stats)
        log.info(
            "ingest %s: %d rows valid, %d quarantined, %d file(s) written, %d unchanged",
            source.name, len(checked.valid), len(checked.quarantine),
            len(write.written), len(write.unchanged),
        )
        if quality.failures:
            failed = "; ".join(f"{loc}: {err}" for loc, err in sorted(quality.failures.items()))
            ok = [loc for loc in location_ids if loc not in quality.failures]
            raise IngestError(
                f"{len(quality.failures)} of {len(location_ids)} location(s) failed after "
                f"retries ({failed}); written: {ok or 'none'}"
            )
    return report
