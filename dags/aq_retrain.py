"""aq_retrain: every night, preprocess -> train -> evaluate -> promote, each a DVC stage."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag
from aq_common import START_DATE, default_args, mapped_stage, retrain_schedule, stage_task

DOC = """
### Nightly retraining

Rebuilds the model from all stored data, stage by stage of `dvc.yaml`, so
`dvc.lock` records exactly what was built from which data and parameters (the
same stages `dvc repro` runs by hand):

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
   (`promotion` in `params.yaml`); a refused candidate is not a failure.

Schedule: `AQ_RETRAIN_SCHEDULE` (cron, UTC; default `0 2 * * *`). One run at
a time (`max_active_runs=1`); every DVC task uses the one-slot `dvc` pool, so
DVC never meets itself. Each step pushes its metrics to the Pushgateway; a task
failure also pushes `aq_step_success=0` for its step.
"""

STAGES = ("train", "evaluate", "promote")  # after the mapped preprocess
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
    _, preprocess = mapped_stage("preprocess")
    tasks = [preprocess]
    tasks += [stage_task(stage, TIMEOUTS.get(stage, timedelta(minutes=30))) for stage in STAGES]
    for upstream, downstream in zip(tasks, tasks[1:], strict=False):
        upstream >> downstream


aq_retrain()
