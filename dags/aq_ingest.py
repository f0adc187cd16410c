"""aq_ingest: every hour, ingest the run's data interval, check it, version it with DVC."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, dag, get_current_context, task
from aq_common import (
    DVC_POOL,
    RAW_DATA,
    START_DATE,
    default_args,
    ingest_batch_size,
    project_dir,
    run_dvc,
    run_interval,
)

DOC = """
### Hourly ingestion

Every hour this DAG fetches the **run's data interval** (the hour before the
run) for every location in `params.yaml` from the configured source
(`source.kind`), validates it and merges it into the monthly raw partitions
under `data/raw/` (`python -m pipeline ingest` does the same from the shell).

1. **plan_batches** splits the locations into batches of `AQ_INGEST_BATCH_SIZE`.
2. **ingest** (mapped, one task per batch) calls `pipeline.steps.ingest.run`
   for the interval. Writes are idempotent: re-running an hour, or backfilling
   a range with `airflow backfill create --dag-id aq_ingest`, leaves the same files.
3. **ingest_quality** fails the run when a location is missing, silent for
   `AQ_MAX_SILENT_HOURS` (default 6) before the interval end, or when more than
   `AQ_MAX_QUARANTINE_SHARE` (default 0.5) of the rows were quarantined; it
   pushes the merged per-location ingestion metrics.
4. **data_version** (pool `dvc`, one slot) runs `dvc add data` and
   `dvc push -r $AQ_DVC_REMOTE` and emits the **aq_raw_data** Asset, whose
   event carries the new `data.dvc` hash; that event schedules `aq_predict`.

Failures push `aq_step_success=0` for the task to the Pushgateway; the
`AqStepFailing` / `AqStepStale` alerts cover failures and missed hours.
"""


def summarise(report) -> dict[str, Any]:
    """An ``IngestReport`` as plain JSON for XCom (no infinities)."""
    quality = report.quality.as_dict()
    quality["freshness_lag_s"] = {
        loc: (None if math.isinf(lag) else lag) for loc, lag in quality["freshness_lag_s"].items()
    }
    stats = report.stats
    return {
        "source": report.source,
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        "quality": quality,
        "files_written": len(report.write.written),
        "files_unchanged": len(report.write.unchanged),
        "rows_new": report.write.rows_new,
        "stats": {
            "requests": dict(stats.requests),
            "responses": [[p, c, n] for (p, c), n in stats.responses.items()],
            "latency_s": {p: list(v) for p, v in stats.latency_s.items()},
        },
    }


def merge_summaries(summaries: list[dict[str, Any]]):
    """One ``IngestQuality`` and ``SourceStats`` for all batches of a run."""
    from pipeline.core.quality import IngestQuality
    from pipeline.io.sources import SourceStats

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
        batch_stats = SourceStats(
            requests=dict(summary["stats"]["requests"]),
            responses={(p, c): n for p, c, n in summary["stats"]["responses"]},
            latency_s={p: list(v) for p, v in summary["stats"]["latency_s"].items()},
        )
        stats.merge(batch_stats)
    merged.null_fraction = (
        {var: w / total_rows for var, w in weighted_nulls.items()}
        if total_rows
        else {var: 1.0 for var in weighted_nulls}
    )
    return merged, stats


def stored_hours(raw_dir, source: str, location_id: str, start, end) -> int:
    """Stored observation hours of a location in [start, end), from its monthly partitions."""
    import pandas as pd
    import pyarrow.parquet as pq

    from pipeline.io.storage import raw_files

    start, end = pd.Timestamp(start), pd.Timestamp(end)
    months = {m.strftime("%Y-%m") for m in pd.date_range(start.floor("D"), end, freq="D")}
    count = 0
    for path in raw_files(raw_dir, source, [location_id]):
        if path.stem.removeprefix("month=") not in months:
            continue
        times = pq.read_table(path, columns=["time"]).column("time").to_pandas()
        times = pd.DatetimeIndex(times).tz_convert("UTC")
        count += int(((times >= start) & (times < end)).sum())
    return count


def check_quality(ctx, summaries: list[dict[str, Any]], start, end, *,
                  max_silent_hours: int, max_quarantine_share: float) -> dict[str, Any]:
    """Problems of one ingestion run; pushes the merged per-location metrics.

    Raises ``IngestError`` naming every problem found.
    """
    from pipeline.errors import IngestError
    from pipeline.io.metrics import StepRun
    from pipeline.steps.ingest import push_quality

    quality, stats = merge_summaries(summaries)
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
    silent_from = end - timedelta(hours=max_silent_hours)
    silent = [
        loc for loc in expected
        if not any(stored_hours(ctx.paths.raw_dir, src, loc, silent_from, end) for src in sources)
    ]
    if silent:
        problems.append(
            f"no stored observation for {silent} in the {max_silent_hours} h before {end}"
        )
    result = {
        "source": sorted(sources),
        "rows_valid": valid,
        "rows_quarantined": quality.quarantined,
        "locations": len(quality.rows_per_location),
        "files_written": sum(s["files_written"] for s in summaries),
    }
    if problems:
        raise IngestError(
            f"ingestion of [{start}, {end}) failed its checks: " + "; ".join(problems)
        )
    return result


@dag(
    dag_id="aq_ingest",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=4,
    default_args=default_args(),
    doc_md=DOC,
    tags=["aq", "ingestion", "dvc"],
)
def aq_ingest():
    @task
    def plan_batches() -> list[list[str]]:
        """Location ids in batches: one mapped ingestion task each."""
        from pipeline.config import load_params
        from pipeline.paths import ProjectPaths

        ids = load_params(ProjectPaths(project_dir()).params).location_ids
        size = ingest_batch_size()
        return [ids[i:i + size] for i in range(0, len(ids), size)]

    @task(map_index_template="{{ batch }}", execution_timeout=timedelta(minutes=20))
    def ingest(locations: list[str]) -> dict[str, Any]:
        from pipeline.context import Context
        from pipeline.steps import ingest as ingest_step

        context = get_current_context()
        context["batch"] = ",".join(locations)  # type: ignore[typeddict-unknown-key]
        start, end = run_interval(context)
        report = ingest_step.run(Context.load(project_dir()), start=start, end=end,
                                 locations=locations)
        return summarise(report)

    @task(execution_timeout=timedelta(minutes=10))
    def ingest_quality(summaries: list[dict[str, Any]]) -> dict[str, Any]:
        import os

        from pipeline.context import Context

        ctx = Context.load(project_dir())
        start, end = run_interval(get_current_context())
        with ctx.reporter.step("ingest_quality"):
            return check_quality(
                ctx, list(summaries), start, end,
                max_silent_hours=int(os.environ.get("AQ_MAX_SILENT_HOURS") or 6),
                max_quarantine_share=float(os.environ.get("AQ_MAX_QUARANTINE_SHARE") or 0.5),
            )

    @task(pool=DVC_POOL, outlets=[RAW_DATA], execution_timeout=timedelta(minutes=20))
    def data_version(checked: dict[str, Any]) -> dict[str, Any]:
        """``dvc add data`` under the raw-write lock, push; the Asset event names the hash."""
        import yaml
        from aq_common import dvc_remote

        from pipeline.context import Context
        from pipeline.io.storage import raw_lock

        ctx = Context.load(project_dir())
        context = get_current_context()
        start, end = run_interval(context)
        with ctx.reporter.step("data_version"):
            with raw_lock(ctx.paths.raw_dir):  # no partition changes while DVC hashes data/
                run_dvc("add", "data", project=ctx.paths.root)
            run_dvc("push", "-r", dvc_remote(), "data.dvc", project=ctx.paths.root)
            out = yaml.safe_load((ctx.paths.root / "data.dvc").read_text())["outs"][0]
        version = {
            "md5": out["md5"], "files": out.get("nfiles"), "bytes": out.get("size"),
            "interval_start": start.isoformat(), "interval_end": end.isoformat(),
            "rows_valid": checked["rows_valid"],
        }
        context["outlet_events"][RAW_DATA].extra = version
        return version

    summaries = ingest.expand(locations=plan_batches())
    data_version(ingest_quality(summaries))


aq_ingest()
