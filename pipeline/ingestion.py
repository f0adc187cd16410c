"""Ingestion in one place: fetch -> validate -> store -> quality, in provider-sized chunks.

Every way data enters the store goes through :class:`Ingestion`:

- :meth:`Ingestion.window` ingests one ``[start, end)`` window (``python -m pipeline ingest``);
- :meth:`Ingestion.backfill` ingests a long range resumably, recording finished chunks in a state
  file (``python -m pipeline backfill``);
- :meth:`Ingestion.catch_up` is what the hourly schedule runs: each location from its newest stored
  hour up to the end of the run's interval (at most ``source.max_catchup_days`` per run, oldest
  first), so the store never has a hole the schedule created;
- :func:`check_run` merges the figures of the mapped batches of one scheduled run and names every
  problem (the DAG's quality gate).

All of them cut their window into chunks no longer than the provider accepts, log one line per
chunk (and show a bar on a terminal), never overwrite stored data with a failed or empty answer,
and fail at the end naming every location that failed; the others are stored.

A service one floor above ``io/``: it takes the run's :class:`~pipeline.context.Context` (which
``io/`` never imports) and composes sources, storage and metrics; steps and DAGs call it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from tqdm import tqdm

from pipeline.core.quality import IngestQuality, freshness_lag
from pipeline.core.validation import validate, validate_forecasts
from pipeline.errors import IngestError
from pipeline.io.catchup import CatchUpLog
from pipeline.io.forecast_metrics import export_observations, latest_observations
from pipeline.io.metrics import StepRun
from pipeline.io.sources import SourceStats, make_source
from pipeline.io.sources.base import (
    answered_without_data,
    batched,
    has_forecasts,
    month_chunks,
    time_chunks,
)
from pipeline.io.storage import (
    StateFileError,
    WriteReport,
    append_quarantine,
    atomic_write_json,
    file_lock,
    newest_observation,
    raw_files,
    raw_write_lock,
    read_state_json,
    stored_times,
    write_for_lock_holder,
    write_forecasts,
    write_raw,
)
from pipeline.parallel import worker_pool
from pipeline.schema import VALUE_COLUMNS
from pipeline.timeutil import floor_hour, now_utc, utc

if TYPE_CHECKING:
    from pipeline.config import Location
    from pipeline.context import Context
    from pipeline.io.sources import Source

log = logging.getLogger(__name__)

DEFAULT_CHUNK_DAYS = 31
MIN_LOCATIONS_PER_PROCESS = 8  # fewer: a worker process costs more than it saves
MAX_GROUP_LOCATIONS = 50  # locations one worker holds at once (memory)
STATE_VERSION = 1
HOUR = pd.Timedelta(hours=1)


# ------------------------------------------------------------------ reports


@dataclass
class IngestReport:
    """What one ingestion (window, backfill or catch-up) did."""

    source: str
    start: pd.Timestamp
    end: pd.Timestamp
    write: WriteReport = field(default_factory=WriteReport)
    quality: IngestQuality = field(default_factory=IngestQuality)
    stats: SourceStats = field(default_factory=SourceStats)
    chunks_total: int = 0
    chunks_fetched: int = 0
    chunks_skipped: int = 0
    rows_valid: int = 0
    rows_quarantined: int = 0
    forecast_rows: int = 0  # weather-forecast rows stored (sources that have forecasts)
    forecast_rows_quarantined: int = 0
    state_path: Path | None = None
    chunk_days: int = 0
    chunk_failures: dict[str, dict[str, str]] = field(default_factory=dict)  # chunk -> loc -> err
    notes: list[str] = field(default_factory=list)
    catching_up: list[str] = field(default_factory=list)  # still behind after this run

    @property
    def ok(self) -> bool:
        return not self.quality.failures

    @property
    def changed(self) -> bool:
        """True when a partition file changed (new or corrected hours were stored)."""
        return bool(self.write.written)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (no infinities) for Airflow's XCom; :func:`check_run` reads it back."""
        quality = self.quality.as_dict()
        quality["freshness_lag_s"] = {
            loc: (None if math.isinf(lag) else lag)
            for loc, lag in quality["freshness_lag_s"].items()
        }
        return {
            "source": self.source,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "quality": quality,
            "files_written": len(self.write.written),
            "files_unchanged": len(self.write.unchanged),
            "rows_new": self.write.rows_new,
            "rows_valid": self.rows_valid,
            "forecast_rows": self.forecast_rows,
            "chunks": self.chunks_fetched,
            "notes": list(self.notes),
            "catching_up": list(self.catching_up),
            "stats": {
                "requests": dict(self.stats.requests),
                "responses": [[p, c, n] for (p, c), n in self.stats.responses.items()],
                "latency_s": {p: list(v) for p, v in self.stats.latency_s.items()},
            },
        }


@dataclass
class ChunkOutcome:
    """What storing one chunk (or one group of its locations) did: figures, plus the few rows
    validation refused (the caller keeps them, one quarantine file per chunk), so a worker
    process hands it back cheaply and groups add up to the chunk."""

    write: WriteReport = field(default_factory=WriteReport)
    stats: SourceStats = field(default_factory=SourceStats)
    failures: dict[str, str] = field(default_factory=dict)  # location -> error
    rows_valid: int = 0
    rows_quarantined: int = 0
    rows_per_location: dict[str, int] = field(default_factory=dict)
    nulls: dict[str, int] = field(default_factory=dict)  # value column -> missing values
    reasons: dict[str, int] = field(default_factory=dict)  # quarantine reason -> rows
    forecast_rows: int = 0
    forecast_rows_quarantined: int = 0
    notes: list[str] = field(default_factory=list)
    # the refused rows with their reasons (few), kept in one file per chunk by the caller
    quarantine: list[pd.DataFrame] = field(default_factory=list)
    forecast_quarantine: list[pd.DataFrame] = field(default_factory=list)

    def merge(self, other: ChunkOutcome) -> None:
        self.write.merge(other.write)
        self.stats.merge(other.stats)
        self.failures.update(other.failures)
        self.rows_valid += other.rows_valid
        self.rows_quarantined += other.rows_quarantined
        for target, source in ((self.rows_per_location, other.rows_per_location),
                               (self.nulls, other.nulls), (self.reasons, other.reasons)):
            for key, n in source.items():
                target[key] = target.get(key, 0) + n
        self.forecast_rows += other.forecast_rows
        self.forecast_rows_quarantined += other.forecast_rows_quarantined
        self.notes.extend(other.notes)
        self.quarantine.extend(other.quarantine)
        self.forecast_quarantine.extend(other.forecast_quarantine)

    def keep_quarantine(self, quarantine_dir: Path, source: str, run_id: str) -> None:
        for frames, suffix in ((self.quarantine, ""), (self.forecast_quarantine, "_forecasts")):
            rows = [f for f in frames if not f.empty]
            if rows:
                append_quarantine(quarantine_dir, source, pd.concat(rows, ignore_index=True),
                                  f"{run_id}{suffix}")


def store_chunk(source: Source, raw_dir: Path, known_locations: Sequence[str],
                locs: Sequence[Location], start: pd.Timestamp, end: pd.Timestamp
                ) -> ChunkOutcome:
    """Fetch -> validate -> store of one window for some locations: the one path every chunk
    takes, in the ingesting process or in one of its workers. Refused rows come back in the
    outcome (:meth:`ChunkOutcome.keep_quarantine`).

    A forecast that cannot be fetched costs features, not observations: the chunk's
    observations stay stored, and a warning and the outcome's notes say what is missing.
    """
    result = source.fetch(locs, start, end)
    checked = validate(result.frame, known_locations=known_locations,
                       time_notes=result.time_notes)
    valid = checked.valid
    outcome = ChunkOutcome(
        write=write_raw(raw_dir, source.name, valid),
        stats=result.stats,
        failures=dict(result.failures),
        rows_valid=len(valid),
        rows_quarantined=len(checked.quarantine),
        rows_per_location={str(loc): int(n)
                           for loc, n in valid.groupby("location_id").size().items()},
        nulls={col: int(valid[col].isna().sum()) for col in VALUE_COLUMNS},
        reasons=dict(checked.reasons),
        quarantine=[checked.quarantine],
    )
    if result.quarantine is not None and len(result.quarantine):
        outcome.quarantine.append(result.quarantine)
        outcome.rows_quarantined += len(result.quarantine)
        for reason, n in result.quarantine_reasons.items():
            outcome.reasons[reason] = outcome.reasons.get(reason, 0) + n
    if has_forecasts(source):
        forecasts = source.fetch_forecasts(locs, start, end)
        checked = validate_forecasts(forecasts.frame, known_locations=known_locations)
        outcome.write.merge(write_forecasts(raw_dir, source.name, checked.valid))
        outcome.forecast_quarantine.append(checked.quarantine)
        outcome.stats.merge(forecasts.stats)
        outcome.forecast_rows = len(checked.valid)
        outcome.forecast_rows_quarantined = len(checked.quarantine)
        for loc, err in sorted(forecasts.failures.items()):
            note = f"weather forecasts of {loc} for {start} .. {end} not stored: {err}"
            outcome.notes.append(note)
            log.warning("ingest %s: %s", source.name, note)
    return outcome


# what a worker process of a parallel ingestion needs, set once by its initializer
_worker: dict[str, Any] = {}


def _start_worker(params, settings, root: Path) -> None:
    write_for_lock_holder()  # the parent holds the raw-data lock while this process lives
    from pipeline.paths import ProjectPaths

    _worker.update(source=make_source(params, settings, root=root),
                   raw_dir=ProjectPaths(root).raw_dir, known_locations=params.location_ids)


def _store_group(locs: Sequence[Location], start: pd.Timestamp, end: pd.Timestamp
                 ) -> ChunkOutcome:
    return store_chunk(_worker["source"], _worker["raw_dir"], _worker["known_locations"],
                       locs, start, end)


class _Tally:
    """Quality figures summed over the chunks of one ingestion."""

    def __init__(self, location_ids: Sequence[str]) -> None:
        self.rows = dict.fromkeys(location_ids, 0)
        self.nulls = dict.fromkeys(VALUE_COLUMNS, 0)
        self.valid = 0
        self.quarantined = 0
        self.reasons: dict[str, int] = {}
        self.failures: dict[str, str] = {}

    def add(self, outcome: ChunkOutcome, chunk: str | None) -> None:
        self.valid += outcome.rows_valid
        self.quarantined += outcome.rows_quarantined
        for loc, n in outcome.rows_per_location.items():
            self.rows[loc] = self.rows.get(loc, 0) + n
        for col, n in outcome.nulls.items():
            self.nulls[col] += n
        for reason, n in outcome.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
        for loc, err in outcome.failures.items():
            self.failures[loc] = f"{chunk}: {err}" if chunk else err

    def quality(self, freshness: dict[str, float]) -> IngestQuality:
        return IngestQuality(
            rows_per_location=dict(self.rows),
            null_fraction={c: (self.nulls[c] / self.valid if self.valid else 1.0)
                           for c in VALUE_COLUMNS},
            freshness_lag_s=freshness,
            failures=dict(self.failures),
            quarantined=self.quarantined,
            quarantine_reasons=dict(self.reasons),
        )


def push_quality(run: StepRun, quality: IngestQuality, stats: SourceStats) -> None:
    """The per-location and per-provider ingestion figures, onto a step's metrics."""
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


def chunk_id(start: pd.Timestamp, end: pd.Timestamp) -> str:
    return f"{start:%Y%m%dT%H}_{end:%Y%m%dT%H}"


# ------------------------------------------------------------------ the ingestion


class Ingestion:
    """Fetch -> validate -> store -> quality for the project's configured source."""

    def __init__(self, ctx: Context, source: Source | None = None) -> None:
        self.ctx = ctx
        self._source = source

    @property
    def source(self) -> Source:
        if self._source is None:
            self._source = make_source(self.ctx.params, self.ctx.settings,
                                       root=self.ctx.paths.root)
        return self._source

    # -- arguments

    def resolve_window(self, start=None, end=None) -> tuple[pd.Timestamp, pd.Timestamp]:
        """``[start, end)`` on whole UTC hours; the configured window where not given."""
        src = self.ctx.params.source
        start_ts = floor_hour(utc(start if start is not None else src.start))
        end_ts = floor_hour(utc(end if end is not None else src.end))
        if end_ts <= start_ts:
            raise IngestError(f"empty window: end {end_ts} is not after start {start_ts}")
        return start_ts, end_ts

    def resolve_locations(self, locations: str | Sequence[str] | None) -> list[Location]:
        if locations is None:
            return list(self.ctx.params.locations)
        wanted = locations.split(",") if isinstance(locations, str) else list(locations)
        known = {loc.id: loc for loc in self.ctx.params.locations}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise IngestError(f"unknown location id(s) {unknown}; params.yaml has {sorted(known)}")
        return [known[w] for w in wanted]

    def chunk_days(self, requested: int | None = None) -> int:
        """Days per request: as asked, never more than the provider accepts."""
        if requested is not None and requested < 1:
            raise IngestError(f"--chunk-days must be at least 1, got {requested}")
        limit = getattr(self.source, "max_days_per_request", None)
        days = requested or limit or DEFAULT_CHUNK_DAYS
        if limit and days > limit:
            log.warning("chunk of %d days exceeds the provider limit of %d days per request: "
                        "using %d", days, limit, limit)
            days = limit
        return int(days)

    # -- the one path every chunk takes

    def _store_chunk(self, locs: Sequence[Location], start: pd.Timestamp, end: pd.Timestamp,
                     run_id: str, report: IngestReport,
                     workers: tuple[ProcessPoolExecutor, int] | None) -> ChunkOutcome:
        paths = self.ctx.paths
        if workers is None:
            outcome = store_chunk(self.source, paths.raw_dir, self.ctx.params.location_ids,
                                  locs, start, end)
        else:  # groups of locations in the worker processes, disjoint partitions each
            pool, size = workers
            futures = [pool.submit(_store_group, group, start, end)
                       for group in batched(list(locs), size)]
            outcome = ChunkOutcome()
            for future in futures:
                outcome.merge(future.result())
        outcome.keep_quarantine(paths.ingest_quarantine_dir, self.source.name, run_id)
        report.write.merge(outcome.write)
        report.stats.merge(outcome.stats)
        report.chunks_fetched += 1
        report.rows_valid += outcome.rows_valid
        report.rows_quarantined += outcome.rows_quarantined
        report.forecast_rows += outcome.forecast_rows
        report.forecast_rows_quarantined += outcome.forecast_rows_quarantined
        report.notes.extend(outcome.notes)
        return outcome

    @contextlib.contextmanager
    def _workers(self, n_locations: int):
        """Worker processes and the locations each takes at once, for a local, CPU-bound
        source (synthetic) with many locations; None otherwise. The raw-data lock is held
        while they live: they write for this process, disjoint partitions at once."""
        processes = min(self.ctx.settings.processes, n_locations // MIN_LOCATIONS_PER_PROCESS)
        if processes < 2 or not getattr(self.source, "cpu_bound", False):
            yield None
            return
        # a few groups per process balance the load; a group's memory stays bounded
        size = min(MAX_GROUP_LOCATIONS, math.ceil(n_locations / (processes * 4)))
        log.info("ingest %s: %d worker processes, groups of up to %d locations",
                 self.source.name, processes, size)
        with raw_write_lock(self.ctx.paths.raw_dir), worker_pool(
            processes, _start_worker, (self.ctx.params, self.ctx.settings, self.ctx.paths.root),
            plain_logs=self.ctx.settings.log_format == "plain",
        ) as pool:
            # no pool inside a daemonic process (a Celery task process): inline, lock held
            yield None if pool is None else (pool, size)

    def _finish(self, report: IngestReport, tally: _Tally, location_ids: Sequence[str],
                metrics: StepRun) -> IngestReport:
        newest = {loc: newest_observation(self.ctx.paths.raw_dir, self.source.name, loc)
                  for loc in location_ids}
        report.quality = tally.quality(freshness_lag(newest, now_utc()))
        metrics.rows(rows_in=report.rows_valid + report.rows_quarantined,
                     rows_out=report.rows_valid, quarantined=report.rows_quarantined)
        push_quality(metrics, report.quality, report.stats)
        return report

    def _observations(self, metrics: StepRun) -> None:
        """The newest observation of every configured location (not only this run's: pushadd
        replaces the whole family), for the forecasts dashboard. Ingest only: backfill fills
        the past and would keep an old "newest" under its own group."""
        export_observations(metrics, latest_observations(
            self.ctx.paths.raw_dir, self.source.name, self.ctx.params.location_ids,
            self.ctx.params.targets))

    def _chunks(self, locs: Sequence[Location], start: pd.Timestamp, end: pd.Timestamp,
                days: int, what: str, report: IngestReport, tally: _Tally,
                progress: bool | None, done: dict[str, set[str]] | None = None,
                on_chunk=None) -> None:
        """Fetch and store ``[start, end)`` chunk by chunk, oldest first, logging each."""
        # a computed source's chunks end at month starts (each partition written once, not
        # merged twice); a provider's keep the fewest requests its limit allows (its quota)
        cut = month_chunks if getattr(self.source, "cpu_bound", False) else time_chunks
        chunks = cut(start, end, days)
        report.chunks_total += len(chunks)
        # progress=None: a bar on a terminal, none in captured logs (Airflow, CI)
        bar = tqdm(chunks, desc=f"{what} {self.source.name}", unit="chunk",
                   disable=None if progress is None else not progress, dynamic_ncols=True)
        with self._workers(len(locs)) as workers:
            for number, (chunk_start, chunk_end) in enumerate(bar, start=1):
                cid = chunk_id(chunk_start, chunk_end)
                finished = (done or {}).get(cid, set())
                todo = [loc for loc in locs if loc.id not in finished]
                if not todo:
                    report.chunks_skipped += 1
                    log.info("%s %s: chunk %d/%d %s .. %s already stored, skipped", what,
                             self.source.name, number, len(chunks), chunk_start, chunk_end)
                    continue
                outcome = self._store_chunk(todo, chunk_start, chunk_end, f"{what}_{cid}",
                                            report, workers)
                failures = outcome.failures
                tally.add(outcome, cid if len(chunks) > 1 else None)
                if failures:
                    report.chunk_failures[cid] = dict(failures)
                log.info("%s %s: chunk %d/%d %s .. %s: %d rows valid, %d quarantined%s", what,
                         self.source.name, number, len(chunks), chunk_start, chunk_end,
                         outcome.rows_valid, outcome.rows_quarantined,
                         f", failed: {sorted(failures)}" if failures else "")
                bar.set_postfix(rows=report.rows_valid, failed=len(report.chunk_failures))
                if on_chunk is not None:
                    on_chunk(cid, chunk_end, todo, outcome)
        bar.close()

    # -- entry points

    def window(self, start=None, end=None, locations=None,
               progress: bool | None = None) -> IngestReport:
        """Ingest ``[start, end)`` (default: the configured window) for some or all locations."""
        start_ts, end_ts = self.resolve_window(start, end)
        locs = self.resolve_locations(locations)
        ids = [loc.id for loc in locs]
        with self.ctx.reporter.step("ingest") as metrics:
            report = IngestReport(self.source.name, start_ts, end_ts)
            tally = _Tally(ids)
            days = report.chunk_days = self.chunk_days()
            log.info("ingest %s: %s .. %s for %d location(s) in chunks of up to %d day(s)",
                     self.source.name, start_ts, end_ts, len(locs), days)
            self._chunks(locs, start_ts, end_ts, days, "ingest", report, tally, progress)
            self._finish(report, tally, ids, metrics)
            self._observations(metrics)
            self._log_summary("ingest", report)
            _raise_failures("ingest", report, ids)
        return report

    def catch_up(self, end, locations=None, interval_start=None,
                 max_days: int | None = None) -> IngestReport:
        """Ingest every location from where it stopped up to ``end`` (the schedule's run).

        Each location resumes after the later of its newest stored hour and its catch-up cursor
        (the end of the last window the provider answered for it, with or without values, so a
        silent station cannot hold the schedule in the past), or at ``interval_start`` if that
        is earlier (a backfill of a past hour). Locations resuming at the same hour are fetched
        together; each window covers at most ``max_days`` (``source.max_catchup_days``): a
        longer gap is closed oldest first over successive runs, never leaving a hole behind. A
        location with nothing stored starts at ``source.start`` (or ``max_days`` before ``end``
        if that is later).
        """
        end_ts = floor_hour(utc(end))
        locs = self.resolve_locations(locations)
        ids = [loc.id for loc in locs]
        max_days = max_days or self.ctx.params.source.max_catchup_days
        bound = pd.Timedelta(days=max_days)
        with self.ctx.reporter.step("ingest") as metrics, contextlib.ExitStack() as stack:
            cursor = CatchUpCursor(self.ctx.paths.ingest_state_dir
                                   / f"catchup_{self.source.name}.json")
            through = cursor.read()
            first = max(floor_hour(utc(self.ctx.params.source.start)), end_ts - bound)
            groups: dict[pd.Timestamp, list[Location]] = {}
            for loc in locs:
                newest = newest_observation(self.ctx.paths.raw_dir, self.source.name, loc.id)
                points = [t for t in (newest + HOUR if newest is not None else None,
                                      through.get(loc.id)) if t is not None]
                resume = max(points) if points else first
                if interval_start is not None:
                    resume = min(resume, floor_hour(utc(interval_start)))
                groups.setdefault(resume, []).append(loc)
            start_ts = min(groups)
            report = IngestReport(self.source.name, start_ts, start_ts)
            tally = _Tally(ids)
            days = report.chunk_days = self.chunk_days()
            blocked: set[str] = set()
            # training waits while a catch-up is under way (pipeline/io/catchup.py)
            heading = {loc.id: min(end_ts, resume + bound) for resume, group in groups.items()
                       for loc in group if min(end_ts, resume + bound) > resume}
            attempt = stack.enter_context(CatchUpLog(self.ctx.paths.ingest_state_dir,
                                                     self.source.name).attempt(heading))

            def advance(cid, chunk_end, todo, outcome):
                # a location's cursor moves over contiguous chunks the provider answered (a
                # silent station's "no data" answer included); an error stops it
                blocked.update(loc for loc, err in outcome.failures.items()
                               if not answered_without_data(err))
                cursor.advance([loc.id for loc in todo if loc.id not in blocked], chunk_end)
                attempt.renew()

            for resume, group in sorted(groups.items()):
                stop = min(end_ts, resume + bound)
                report.end = max(report.end, stop)
                names = [loc.id for loc in group]
                if stop <= resume:
                    log.info("ingest %s: %s stored up to %s; nothing to fetch", self.source.name,
                             names, end_ts)
                    continue
                if stop < end_ts:
                    note = (f"catch-up of {names} limited to {max_days} day(s) per run "
                            f"(source.max_catchup_days): stored up to {stop}; the "
                            f"{int((end_ts - stop) / HOUR)} hour(s) after it follow in the next "
                            "runs")
                    report.notes.append(note)
                    report.catching_up.extend(names)
                    log.warning("ingest %s: %s", self.source.name, note)
                log.info("ingest %s: %d hour(s) %s .. %s for %s", self.source.name,
                         int((stop - resume) / HOUR), resume, stop, names)
                self._chunks(group, resume, stop, days, "ingest", report, tally,
                             progress=False, on_chunk=advance)
            self._finish(report, tally, ids, metrics)
            self._observations(metrics)
            self._log_summary("ingest", report)
            _raise_failures("ingest", report, ids)
        return report

    def backfill(self, start=None, end=None, locations=None, chunk_days: int | None = None,
                 progress: bool | None = None) -> IngestReport:
        """Ingest ``[start, end)`` in chunks, resumably: a re-run redoes only what is missing.

        After each chunk the locations it stored are recorded (atomically) in a state file under
        ``build/ingest_state``; raises ``IngestError`` if any location of any chunk still failed
        (the rest is stored and recorded).
        """
        start_ts, end_ts = self.resolve_window(start, end)
        locs = self.resolve_locations(locations)
        ids = [loc.id for loc in locs]
        with self.ctx.reporter.step("backfill") as metrics:
            days = self.chunk_days(chunk_days)
            path = self.state_path(start_ts, end_ts, days)
            state = load_backfill_state(path, self.source.name, start_ts, end_ts, days)
            report = IngestReport(self.source.name, start_ts, end_ts, state_path=path,
                                  chunk_days=days)
            tally = _Tally(ids)
            log.info("backfill %s: %s .. %s in chunks of %d day(s), state %s", self.source.name,
                     start_ts, end_ts, days, path)
            done = {cid: set(entry.get("done", [])) for cid, entry in state["chunks"].items()}

            def record(cid, chunk_end, todo, outcome):
                entry = state["chunks"].setdefault(cid, {"done": [], "failed": {}})
                stored = [loc.id for loc in todo if loc.id not in outcome.failures]
                entry["done"] = sorted(set(entry["done"]) | set(stored))
                entry["failed"] = dict(sorted(outcome.failures.items()))
                entry["rows"] = entry.get("rows", 0) + outcome.rows_valid
                entry["updated"] = now_utc().isoformat()
                atomic_write_json(path, state)

            self._chunks(locs, start_ts, end_ts, days, "backfill", report, tally, progress,
                         done=done, on_chunk=record)
            self._finish(report, tally, ids, metrics)
            self._log_summary("backfill", report)
            if report.chunk_failures:
                detail = "; ".join(
                    f"{cid} {loc}: {err}" for cid, errs in sorted(report.chunk_failures.items())
                    for loc, err in sorted(errs.items())
                )
                raise IngestError(
                    f"backfill {self.source.name}: {len(report.chunk_failures)} of "
                    f"{report.chunks_total} chunk(s) have failed locations ({detail}); everything "
                    f"else is stored. Run the same command again to retry only what failed "
                    f"(state: {path})"
                )
        return report

    def state_path(self, start: pd.Timestamp, end: pd.Timestamp, chunk_days: int) -> Path:
        """One state file per source, range and chunk size (a different cut is another plan)."""
        name = f"backfill_{self.source.name}_{chunk_id(start, end)}_{chunk_days}d.json"
        return self.ctx.paths.ingest_state_dir / name

    def _log_summary(self, what: str, report: IngestReport) -> None:
        log.info("%s %s: %d chunk(s) fetched, %d already stored, %d rows valid, %d quarantined, "
                 "%d file(s) written, %d unchanged%s", what, report.source, report.chunks_fetched,
                 report.chunks_skipped, report.rows_valid, report.rows_quarantined,
                 len(report.write.written), len(report.write.unchanged),
                 f", {report.forecast_rows} weather-forecast rows"
                 f" ({report.forecast_rows_quarantined} quarantined)"
                 if has_forecasts(self.source) else "")


def _raise_failures(what: str, report: IngestReport, location_ids: Sequence[str]) -> None:
    failures = report.quality.failures
    if not failures:
        return
    failed = "; ".join(f"{loc}: {err}" for loc, err in sorted(failures.items()))
    ok = [loc for loc in location_ids if loc not in failures]
    raise IngestError(
        f"{len(failures)} of {len(location_ids)} location(s) failed after retries ({failed}); "
        f"written: {ok or 'none'}"
    )


class CatchUpCursor:
    """Per location, the end of the last window the provider answered (a JSON state file).

    Updated under a file lock (several scheduled runs may finish at once) and only forwards.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, pd.Timestamp]:
        if not self.path.exists():
            return {}
        state = read_state_json(self.path, "catch-up cursor",
                                "delete it: the next run resumes from the newest stored hours")
        through = state.get("through") if isinstance(state, dict) else None
        if not isinstance(through, dict):
            raise StateFileError(f"catch-up cursor {self.path} has no 'through' mapping: delete "
                                 "it; the next run resumes from the newest stored hours")
        try:
            return {str(k): utc(v) for k, v in through.items()}
        except ValueError as exc:
            raise StateFileError(f"catch-up cursor {self.path}: {exc}: delete it; the next run "
                                 "resumes from the newest stored hours") from None

    def advance(self, location_ids: Sequence[str], to: pd.Timestamp) -> None:
        if not location_ids:
            return
        with file_lock(self.path.with_suffix(".lock")):
            through = self.read()
            for loc in location_ids:
                if loc not in through or through[loc] < to:
                    through[loc] = to
            atomic_write_json(self.path, {
                "version": STATE_VERSION,
                "through": {k: v.isoformat() for k, v in sorted(through.items())},
            })


def load_backfill_state(path: Path, source: str, start: pd.Timestamp, end: pd.Timestamp,
                        chunk_days: int) -> dict:
    fresh = {"version": STATE_VERSION, "source": source, "start": start.isoformat(),
             "end": end.isoformat(), "chunk_days": chunk_days, "chunks": {}}
    if not path.exists():
        return fresh
    recovery = "delete it to start the backfill over (stored data is kept)"
    state = read_state_json(path, "backfill state", recovery)
    expected = {k: fresh[k] for k in ("source", "start", "end", "chunk_days")}
    found = {k: state.get(k) if isinstance(state, dict) else None for k in expected}
    if found != expected or not isinstance(state.get("chunks"), dict):
        raise StateFileError(f"backfill state {path} belongs to another plan ({found}): {recovery}")
    return state


# ------------------------------------------------------------------ the schedule's quality gate


def merge_reports(summaries: Sequence[dict[str, Any]]) -> tuple[IngestQuality, SourceStats]:
    """One ``IngestQuality`` and ``SourceStats`` for all mapped batches of a run."""
    merged = IngestQuality()
    stats = SourceStats()
    weighted_nulls: dict[str, float] = {}
    total_rows = 0
    for summary in summaries:
        quality = summary["quality"]
        rows = sum(quality["rows_per_location"].values())
        total_rows += rows
        merged.rows_per_location.update(quality["rows_per_location"])
        merged.freshness_lag_s.update(
            {loc: math.inf if lag is None else lag
             for loc, lag in quality["freshness_lag_s"].items()}
        )
        merged.failures.update(quality["failures"])
        merged.quarantined += quality["quarantined"]
        for reason, n in quality["quarantine_reasons"].items():
            merged.quarantine_reasons[reason] = merged.quarantine_reasons.get(reason, 0) + n
        for var, frac in quality["null_fraction"].items():
            weighted_nulls[var] = weighted_nulls.get(var, 0.0) + frac * rows
        stats.merge(SourceStats(
            requests=dict(summary["stats"]["requests"]),
            responses={(p, c): n for p, c, n in summary["stats"]["responses"]},
            latency_s={p: list(v) for p, v in summary["stats"]["latency_s"].items()},
        ))
    merged.null_fraction = (
        {var: w / total_rows for var, w in weighted_nulls.items()}
        if total_rows
        else {var: 1.0 for var in weighted_nulls}
    )
    return merged, stats


def stored_hours(raw_dir: Path, source: str, location_id: str, start, end) -> int:
    """Stored observation hours of a location in ``[start, end)``."""
    start, end = utc(start), utc(end)
    times = stored_times(raw_dir, source, location_id, start, end)
    return int(len(times))


def check_run(ctx: Context, summaries: Sequence[dict[str, Any]], start, end, *,
              max_silent_hours: int, max_quarantine_share: float) -> dict[str, Any]:
    """Problems of one scheduled ingestion run; pushes the merged per-location figures.

    Raises ``IngestError`` naming every problem found: a location not ingested or failed, a
    location with no stored observation in the ``max_silent_hours`` before ``end``, or more than
    ``max_quarantine_share`` of the rows quarantined.
    """
    quality, stats = merge_reports(summaries)
    sources = {s["source"] for s in summaries}
    run = StepRun("ingest")  # all batches' figures under the ingest step's grouping key
    push_quality(run, quality, stats)
    ctx.reporter.push(run)

    problems: list[str] = []
    expected = ctx.params.location_ids
    missing = [loc for loc in expected if loc not in quality.rows_per_location]
    if missing:
        problems.append(f"location(s) {missing} were not ingested")
    if quality.failures:
        problems.append(f"location(s) failed: {quality.failures}")
    valid = sum(quality.rows_per_location.values())
    total = valid + quality.quarantined
    share = quality.quarantined / total if total else 0.0
    if share > max_quarantine_share:
        problems.append(
            f"{quality.quarantined} of {total} rows quarantined ({share:.0%} > "
            f"{max_quarantine_share:.0%}); reasons {quality.quarantine_reasons}"
        )
    end_ts = utc(end)
    silent_from = end_ts - pd.Timedelta(hours=max_silent_hours)
    # a location still catching up a long gap is behind, not silent: it continues next run
    catching_up = sorted({loc for s in summaries for loc in s.get("catching_up", [])})
    if catching_up:
        log.warning("still catching up %s: the recent hours follow in the next runs (their "
                    "forecasts are withheld until then)", catching_up)
    silent = [
        loc for loc in expected
        if loc not in catching_up
        and not any(stored_hours(ctx.paths.raw_dir, src, loc, silent_from, end_ts)
                    for src in sources)
    ]
    if silent:
        problems.append(
            f"no stored observation for {silent} in the {max_silent_hours} h before {end_ts}"
        )
    result = {
        "source": sorted(sources),
        "rows_valid": valid,
        "rows_quarantined": quality.quarantined,
        "locations": len(quality.rows_per_location),
        "files_written": sum(s["files_written"] for s in summaries),
        "changed": any(s["files_written"] for s in summaries),
        "notes": [n for s in summaries for n in s.get("notes", [])],
        "catching_up": catching_up,
    }
    if problems:
        raise IngestError(
            f"ingestion of [{utc(start)}, {end_ts}) failed its checks: " + "; ".join(problems)
        )
    return result


__all__ = [
    "IngestReport",
    "Ingestion",
    "check_run",
    "chunk_id",
    "load_backfill_state",
    "merge_reports",
    "push_quality",
    "raw_files",
    "stored_hours",
]
