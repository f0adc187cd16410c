"""aq_retrain: every night, preprocess -> train -> evaluate -> promote, each a DVC stage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, get_current_context, task
from aq_common import (
    DVC_POOL,
    SETTLE_POLL_S,
    SETTLE_WAIT,
    STALE_SLOT,
    START_DATE,
    catch_ups_in_progress,
    default_args,
    mapped_stage,
    project_dir,
    repro_stage,
    retrain_schedule,
    settings,
    settle_decision,
    stage_task,
    stored_behind,
)

DOC = """
### Nightly retraining

Rebuilds the model from all stored data, stage by stage of `dvc.yaml`, so
`dvc.lock` records exactly what was built from which data and parameters (the
same stages `dvc repro` runs by hand):

0. **settled_store** waits while an ingestion catches the store up, and a nightly slot
   that starts more than an hour late (the hand-over after `make run`, a scheduler that
   was down) waits until the store is caught up to now; after 100 min it skips the run, the
   reason on the task (docs/airflow.md, "Training sees a settled store");
1. **preprocess**, data-parallel: **plan_preprocess_batches** splits the locations into
   batches of `AQ_BATCH_LOCATIONS`; **preprocess_batch** (mapped, one task per
   batch, on any worker) validates and featurises its locations into their
   partitions `build/features/location=L/`; **preprocess** (pool `dvc`) writes
   the quality report, rebuilds any location whose raw data changed meanwhile,
   and records the stage with `dvc commit`;
2. **train**: fit one candidate model per target x horizon on a bounded,
   seeded sample scanned from the partitions (`dvc repro --single-item`, as the
   next two);
3. **evaluate**: score the candidate and the baselines on the time-ordered holdout;
4. **promote**: make the candidate champion only if it passes the gate
   (`promotion` in `params.yaml`, and a holdout covering every location the champion
   serves, with data no older than the champion's); a refused candidate is not a
   failure: the task ends **skipped** with the gate's reasons, shown in the grid.

Schedule: `AQ_RETRAIN_SCHEDULE` (cron, UTC; default `0 2 * * *`). One run at
a time (`max_active_runs=1`); every DVC task uses the one-slot `dvc` pool, so
DVC never meets itself. Each step pushes its metrics to the Pushgateway; a task
failure also pushes `aq_step_success=0` for its step.
"""

STAGES = ("train", "evaluate")  # after the mapped preprocess; promote below
TIMEOUTS = {"train": timedelta(hours=2)}


@dag(
    dag_id="aq_retrain",
    schedule=retrain_schedule(),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    doc_md=DOC,
    tags=["aq", "training", "dvc"],
)
def aq_retrain():
    @task(execution_timeout=timedelta(hours=2),
          doc_md="waits while an ingestion catches the store up (docs/airflow.md)")
    def settled_store() -> None:
        """Start from a settled store, or skip with the reason (the grid shows it)."""
        import logging
        import time

        from airflow.sdk.exceptions import AirflowSkipException

        context = get_current_context()
        dag_run = context["dag_run"]
        slot = context.get("data_interval_end") or dag_run.run_after
        started = dag_run.start_date or datetime.now(UTC)
        scheduled = str(dag_run.run_type).lower().endswith("scheduled")
        slack = timedelta(hours=settings().max_silent_hours)
        logged = ""
        while True:
            now = datetime.now(UTC)
            behind = stored_behind(started.replace(minute=0, second=0, microsecond=0), slack) \
                if scheduled and started - slot > STALE_SLOT else {}
            ready, why = settle_decision(scheduled=scheduled, slot=slot, started=started,
                                         now=now, pending=catch_ups_in_progress(),
                                         behind=behind)
            if ready:
                return
            if now - started > SETTLE_WAIT:
                raise AirflowSkipException(why)
            if why != logged:
                logging.getLogger("aq_retrain").warning("waiting: %s", why)
                logged = why
            time.sleep(SETTLE_POLL_S)

    plan, preprocess = mapped_stage("preprocess")
    settled_store() >> plan
    tasks = [preprocess]
    tasks += [stage_task(stage, TIMEOUTS.get(stage, timedelta(minutes=30)))
              for stage in STAGES]

    @task(task_id="promote", pool=DVC_POOL, execution_timeout=timedelta(minutes=30),
          doc_md="`dvc repro --single-item promote`; a refused candidate ends **skipped**, "
                 "the gate's reasons on the task")
    def promote() -> dict:
        """The gate; a refusal is a skip with its reasons, so the grid shows it."""
        from airflow.sdk.exceptions import AirflowSkipException

        from pipeline.io.storage import read_state_json
        from pipeline.paths import ProjectPaths

        repro_stage("promote")
        report = read_state_json(ProjectPaths(project_dir()).promotion_report,
                                 "promotion report", "run `python -m pipeline promote` again")
        if not report["promoted"]:
            # the reasons on the task instance (its XCom), the state in the grid: skipped
            get_current_context()["ti"].xcom_push(key="refused", value=report["refusals"])
            raise AirflowSkipException(
                f"candidate {report['candidate']} refused by the promotion gate, champion "
                f"{report['champion']} stays: " + "; ".join(report["refusals"]))
        return {k: report.get(k) for k in ("candidate", "champion", "switched",
                                           "data_version")}

    tasks.append(promote())
    for upstream, downstream in zip(tasks, tasks[1:], strict=False):
        upstream >> downstream


aq_retrain()
