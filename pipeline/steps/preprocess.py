"""Validate raw data (quarantining bad rows with reasons) and build the feature table.

The table is partitioned by location (``build/features/location=L/``,
``pipeline.io.feature_store``) and built a batch of locations at a time, so memory grows
with the batch (``AQ_BATCH_LOCATIONS``), not with the number of locations:

- ``python -m pipeline preprocess``: every location, batch after batch, then the
  finalisation (what the DVC stage runs);
- ``python -m pipeline preprocess --locations a,b``: only those locations' partitions (one
  mapped Airflow task per batch, possibly on different workers);
- ``python -m pipeline preprocess --finalize``: from the partitions, ``reports/quality.json``
  and ``build/quarantine.parquet``; partitions of locations no longer in ``params.yaml`` are
  removed, and a location whose partition is missing or was built from other raw data than
  there is now (an ingestion in between) is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging

import pandas as pd

from pipeline.context import Context
from pipeline.core.validation import validate
from pipeline.errors import CatchingUpError, MissingInputError, PipelineError
from pipeline.inputs import features_from_raw, newest_stored
from pipeline.io.catchup import CatchUpLog, describe
from pipeline.io.feature_store import FeatureStore, location_batches
from pipeline.io.storage import (
    atomic_write_json,
    atomic_write_parquet,
    raw_files,
    read_raw,
)
from pipeline.parallel import worker_pool
from pipeline.steps.common import data_version, parse_locations

log = logging.getLogger(__name__)


def raw_signature(ctx: Context, location: str) -> str:
    """What a location's raw partitions are now (names, sizes, modification times): a
    partition built from other raw files is stale. Raw writes replace files, so a changed
    partition always changes it."""
    digest = hashlib.sha256()
    for path in raw_files(ctx.paths.raw_dir, ctx.params.source.kind, [location]):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def history_start(ctx: Context, newest: pd.Timestamp | None) -> pd.Timestamp | None:
    if not ctx.params.history_days or newest is None:
        return None
    return newest - pd.Timedelta(days=ctx.params.history_days)


def build_batch(ctx: Context, store: FeatureStore, locations: list[str],
                newest: pd.Timestamp | None) -> int:
    """Validate and featurise ``locations``, each on its own; one partition per location.

    Returns the number of feature rows written.
    """
    signatures = {loc: raw_signature(ctx, loc) for loc in locations}
    raw = read_raw(ctx.paths.raw_dir, ctx.params.source.kind, locations)
    since = history_start(ctx, newest)
    rows = 0
    for location, part in raw.groupby("location_id", sort=True):
        checked = validate(part, known_locations=ctx.params.location_ids)
        valid = checked.valid
        if since is not None:
            valid = valid[valid["time"] > since]
        if valid.empty:
            log.warning("preprocess: no valid rows for %s", location)
            continue
        features = features_from_raw(ctx, valid.reset_index(drop=True))
        stats = {
            "location_id": str(location),
            "rows_in": int(checked.rows_in),
            "rows_valid": int(len(valid)),
            "rows_quarantined": int(len(checked.quarantine)),
            "duplicates_collapsed": int(checked.duplicates_collapsed),
            "quarantine_reasons": {k: int(v) for k, v in checked.reasons.items()},
            "feature_rows": int(len(features)),
            "time_min": valid["time"].min().isoformat(),
            "time_max": valid["time"].max().isoformat(),
            "raw_signature": signatures[str(location)],
            "history_start": None if since is None else since.isoformat(),
        }
        store.write(str(location), features, checked.quarantine, stats)
        rows += len(features)
    return rows


# the context of a worker process building batches, set once by its initializer
_worker: dict[str, Context] = {}


def _start_worker(root, settings) -> None:
    _worker["ctx"] = Context.load(root, settings=settings)


def _build_in_worker(batch: list[str], newest: pd.Timestamp | None) -> int:
    ctx = _worker["ctx"]
    return build_batch(ctx, FeatureStore(ctx.paths.features), batch, newest)


def build(ctx: Context, locations: list[str]) -> int:
    """Partitions of ``locations``, a batch at a time (batches spread over ``AQ_PROCESSES``
    worker processes, each holding one batch); the feature rows written."""
    store = FeatureStore(ctx.paths.features)
    newest = newest_stored(ctx)
    batches = location_batches(locations, ctx.settings.batch_locations)
    total = 0
    with worker_pool(min(ctx.settings.processes, len(batches)), _start_worker,
                     (ctx.paths.root, ctx.settings),
                     plain_logs=ctx.settings.log_format == "plain") as pool:
        if pool is None:
            counts = (build_batch(ctx, store, batch, newest) for batch in batches)
        else:
            counts = pool.map(_build_in_worker, batches, [newest] * len(batches))
        for batch, rows in zip(batches, counts, strict=True):
            total += rows
            log.info("preprocess: %d feature rows for %d location(s) %s .. %s", rows,
                     len(batch), batch[0], batch[-1])
    return total


def require_settled_store(ctx: Context) -> None:
    """Refuse to take the training snapshot while an ingestion is catching the store up.

    Half-way through a catch-up some locations are months ahead of others; features built
    then would give a holdout of the furthest ones only. The DAG waits and tries again;
    ``dvc repro`` stops here (its lock holds the catch-up's next write anyway).
    """
    pending = CatchUpLog(ctx.paths.ingest_state_dir, ctx.params.source.kind).in_progress()
    if pending:
        raise CatchingUpError(
            f"an ingestion is catching the raw store up ({describe(pending)}): training would "
            "read some locations further than others; run again when it has finished "
            "(`python -m pipeline summary` shows the catch-up)")


def finalize(ctx: Context) -> dict:
    """The quality report and the quarantine file from every location's partition."""
    require_settled_store(ctx)
    store = FeatureStore(ctx.paths.features)
    configured = ctx.params.location_ids
    removed = store.remove_except(configured)
    if removed:
        log.info("preprocess: removed the partitions of %d location(s) no longer in "
                 "params.yaml: %s", len(removed), ", ".join(removed[:10]))
    source = ctx.params.source.kind
    since = history_start(ctx, newest_stored(ctx))
    since = None if since is None else since.isoformat()


    def is_stale(location: str) -> bool:
        stats = store.stats(location)
        if stats is None:
            return bool(raw_files(ctx.paths.raw_dir, source, [location]))
        return (stats.get("raw_signature") != raw_signature(ctx, location)
                or stats.get("history_start") != since)

    stale = [loc for loc in configured if is_stale(loc)]
    if stale:
        # raw data changed after the batch read it (or a batch is missing): rebuild those
        log.warning("preprocess: %d location(s) without a partition of the current raw data, "
                    "rebuilt now: %s", len(stale), ", ".join(stale[:10]))
        build(ctx, stale)
    stats = {loc: s for loc in configured if (s := store.stats(loc)) is not None}
    if not stats:
        raise MissingInputError(f"no raw data for source {source!r} in {ctx.paths.raw_dir}: "
                                "run `python -m pipeline ingest` first")
    quarantine = [q for loc in stats if len(q := store.quarantine(loc))]
    quarantined = (pd.concat(quarantine, ignore_index=True) if quarantine
                   else store.quarantine(next(iter(stats))))
    atomic_write_parquet(ctx.paths.quarantine, quarantined)
    reasons: dict[str, int] = {}
    for s in stats.values():
        for reason, count in s["quarantine_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    rows_valid = sum(s["rows_valid"] for s in stats.values())
    feature_rows = sum(s["feature_rows"] for s in stats.values())
    report = {
        "rows_in": sum(s["rows_in"] for s in stats.values()),
        "rows_valid": rows_valid,
        "rows_quarantined": sum(s["rows_quarantined"] for s in stats.values()),
        "duplicates_collapsed": sum(s["duplicates_collapsed"] for s in stats.values()),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "missing_hours": int(feature_rows - rows_valid),
        "rows_per_location": {loc: s["rows_valid"] for loc, s in stats.items()},
        "time_min": str(min(pd.Timestamp(s["time_min"]) for s in stats.values())),
        "time_max": str(max(pd.Timestamp(s["time_max"]) for s in stats.values())),
        "feature_rows": feature_rows,
        "locations": len(stats),
        # the snapshot training reads: its version and each location's stored hours
        "data_version": data_version(ctx),
        "extents": {loc: {"first_hour": s["time_min"], "last_hour": s["time_max"],
                          "rows_valid": s["rows_valid"],
                          "rows_quarantined": s["rows_quarantined"]}
                    for loc, s in stats.items()},
    }
    atomic_write_json(ctx.paths.quality_report, report)
    return report


def run(ctx: Context, locations: str | None = None, finalize_only: bool = False) -> dict:
    if locations is not None and finalize_only:
        raise PipelineError("preprocess: give --locations (build those partitions) or "
                            "--finalize (combine them), not both")
    if locations is not None:
        with ctx.reporter.step("preprocess_batch") as metrics:
            chosen = parse_locations(ctx, locations)
            rows = build(ctx, chosen)
            metrics.rows(rows_out=rows)
        return {"locations": chosen, "feature_rows": rows}
    with ctx.reporter.step("preprocess") as metrics:
        if not finalize_only:
            require_settled_store(ctx)
            build(ctx, ctx.params.location_ids)
        report = finalize(ctx)
        metrics.rows(rows_in=report["rows_in"], rows_out=report["feature_rows"],
                      quarantined=report["rows_quarantined"])
        log.info("preprocess: %d valid rows, %d quarantined, %d feature rows, %d locations",
                 report["rows_valid"], report["rows_quarantined"], report["feature_rows"],
                 report["locations"])
    return report
