"""aq_ingest: every hour, catch up each location to the run's interval, check it, version it."""

from __future__ import annotations

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

Every hour this DAG brings every location in `params.yaml` up to the end of the
**run's data interval**: each location resumes after its newest stored hour, so the
first run after `make run` (or after an outage) fills the whole gap, oldest first, at
most `source.max_catchup_days` per run, in provider-sized chunks with one log line per
chunk. Rows are validated and merged into the monthly raw partitions under `data/raw/`
(`pipeline.ingestion`, the same code as `python -m pipeline ingest` and `backfill`).

1. **plan_batches** splits the locations into batches of `AQ_INGEST_BATCH_SIZE`.
2. **ingest** (mapped, one task per batch) catches the batch up. Writes are idempotent:
   re-running an hour, or backfilling a range with
   `airflow backfill create --dag-id aq_ingest`, leaves the same files.
3. **ingest_quality** fails the run when a location is missing or failed, silent for
   `AQ_MAX_SILENT_HOURS` (default 6) before the interval end, or when more than
   `AQ_MAX_QUARANTINE_SHARE` (default 0.5) of the rows were quarantined; it pushes the
   merged per-location ingestion metrics.
4. **data_version** (pool `dvc`, one slot) runs `dvc add data` and
   `dvc push -r $AQ_DVC_REMOTE` and, only when the stored data changed, emits the
   **aq_raw_data** Asset, whose event carries the new `data.dvc` hash; that event
   schedules `aq_predict`. A run that stored nothing new is a skip, not an event.

Failures push `aq_step_success=0` for the task to the Pushgateway; the
`PipelineStepFailing`, `PipelineStepStale` and `IngestionFreshnessLag` alerts cover
failures, missed hours and stale data (docs/runbook.md).
"""


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
        from pipeline.ingestion import Ingestion

        context = get_current_context()
        context["batch"] = ",".join(locations)  # type: ignore[typeddict-unknown-key]
        start, end = run_interval(context)
        report = Ingestion(Context.load(project_dir())).catch_up(
            end, locations=locations, interval_start=start)
        return report.to_json()

    @task(execution_timeout=timedelta(minutes=10))
    def ingest_quality(summaries: list[dict[str, Any]]) -> dict[str, Any]:
        from aq_common import settings

        from pipeline.context import Context
        from pipeline.ingestion import check_run

        ctx = Context.load(project_dir())
        start, end = run_interval(get_current_context())
        with ctx.reporter.step("ingest_quality"):
            return check_run(
                ctx, list(summaries), start, end,
                max_silent_hours=settings().max_silent_hours,
                max_quarantine_share=settings().max_quarantine_share,
            )

    @task(pool=DVC_POOL, outlets=[RAW_DATA], execution_timeout=timedelta(minutes=20))
    def data_version(checked: dict[str, Any]) -> dict[str, Any]:
        """``dvc add data``, push; an Asset event naming the hash only if the data changed."""
        from aq_common import data_dvc_md5, dvc_remote

        from pipeline.context import Context

        ctx = Context.load(project_dir())
        context = get_current_context()
        start, end = run_interval(context)
        with ctx.reporter.step("data_version"):
            before = data_dvc_md5(ctx.paths.root)
            # DVC's own lock on data/ keeps ingest writes out while it hashes
            run_dvc("add", "data", project=ctx.paths.root)
            run_dvc("push", "-r", dvc_remote(), "data.dvc", project=ctx.paths.root)
            out = data_dvc_md5(ctx.paths.root, full=True)
        version = {
            "md5": out["md5"], "files": out.get("nfiles"), "bytes": out.get("size"),
            "interval_start": start.isoformat(), "interval_end": end.isoformat(),
            "rows_valid": checked["rows_valid"],
        }
        if out["md5"] == before:
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(
                f"stored data unchanged (data.dvc md5 {before}): no aq_raw_data event, so "
                "aq_predict does not re-run for nothing"
            )
        context["outlet_events"][RAW_DATA].extra = version
        return version

    summaries = ingest.expand(locations=plan_batches())
    data_version(ingest_quality(summaries))


aq_ingest()
