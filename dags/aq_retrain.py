"""aq_retrain: every night, preprocess -> train -> evaluate -> promote, each a DVC stage."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag
from aq_common import START_DATE, default_args, retrain_schedule, stage_task

DOC = """
### Nightly retraining

Rebuilds the model from all stored data, one Airflow task per DVC stage, each
run as `dvc repro --single-item <stage>` so `dvc.lock` records exactly what was
built from which data and parameters (the same stages `dvc repro` runs by hand):

1. **preprocess**: validate raw data, quarantine bad rows, build features;
2. **train**: fit one candidate model per target x horizon;
3. **evaluate**: score the candidate and the baselines on the time-ordered holdout;
4. **promote**: make the candidate champion only if it passes the gate
   (`promotion` in `params.yaml`); a refused candidate is not a failure.

Schedule: `AQ_RETRAIN_SCHEDULE` (cron, UTC; default `0 2 * * *`). One run at
a time (`max_active_runs=1`); every task uses the one-slot `dvc` pool, so DVC
never meets itself. Each step pushes its metrics to the Pushgateway; a task
failure also pushes `aq_step_success=0` for its step.
"""

STAGES = ("preprocess", "train", "evaluate", "promote")
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
    tasks = [stage_task(stage, TIMEOUTS.get(stage, timedelta(minutes=30))) for stage in STAGES]
    for upstream, downstream in zip(tasks, tasks[1:], strict=False):
        upstream >> downstream


aq_retrain()
