"""aq_predict: after each ingestion, batch forecasts, their realised accuracy and drift."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task
from aq_common import (
    RAW_DATA,
    START_DATE,
    default_args,
    mapped_stage,
    project_dir,
    stage_task,
)

DOC = """
### Batch forecasts

Scheduled on the **aq_raw_data** Asset: every successful `aq_ingest` run
(its `data_version` task) triggers one run here, so forecasts follow the data.

1. **champion_ready** skips the rest while there is no champion model yet
   (run `aq_retrain` once first); a skip is logged, not a failure.
2. **predict**, data-parallel: **plan_predict_batches** splits the locations into
   batches of `AQ_BATCH_LOCATIONS`; **predict_batch** (mapped, any worker)
   forecasts its locations into `predictions/pending/`; **predict** (pool
   `dvc`) publishes them as one run (`predictions/run=.../forecasts.parquet`,
   `latest.parquet`, `reports/forecast.json`, the metrics) and records the stage
   with `dvc commit`.
3. **score**: realised accuracy of earlier forecasts against the observations
   that have arrived since.
4. **drift**: PSI of recent features against the champion's training data.

The DVC tasks run in the one-slot `dvc` pool, so `dvc.lock` records
them and they never race the nightly retraining. Each step pushes its metrics
to the Pushgateway; a task failure also pushes `aq_step_success=0`.
"""


@dag(
    dag_id="aq_predict",
    schedule=[RAW_DATA],
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    doc_md=DOC,
    tags=["aq", "forecast", "dvc"],
)
def aq_predict():
    @task.short_circuit(execution_timeout=timedelta(minutes=2))
    def champion_ready() -> bool:
        import logging

        from pipeline.paths import ProjectPaths

        pointer = ProjectPaths(project_dir()).champion_pointer
        if not pointer.is_file():
            logging.getLogger(__name__).warning(
                "no champion model yet (%s missing): run aq_retrain first; skipping", pointer
            )
            return False
        return True

    plan, predict = mapped_stage("predict")
    champion_ready() >> plan
    predict >> stage_task("score") >> stage_task("drift")


aq_predict()
