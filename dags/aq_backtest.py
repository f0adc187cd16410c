"""aq_backtest: on demand, a rolling-origin backtest over a window chosen in the trigger form."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from aq_common import START_DATE, default_args, project_dir

DOC = """
### Backtest (triggered by hand)

"How would this model have done over that period?" Trigger this DAG from the UI
(**Trigger DAG**, then fill in the form) or with
`airflow dags trigger aq_backtest --conf '{"start": "2025-11-02", "end": "2026-01-01"}'`.

It runs `python -m pipeline backtest` (the same code as the CLI and the DVC stage):
every forecast whose target hour lies in **[start, end)** (UTC) is issued from the data
available at its origin, by the chosen **model** (`champion`, `candidate` or a registry
version). With **refit_every_days** > 0 the model is refitted every so many days on the
data known then; with 0 the model is used as trained, and a window it has seen is
refused. Empty **start** / **end** take `backtest` in `params.yaml` (the last
`backtest.days` days of data).

Outputs go to `backtests/<run id>/`: `predictions.parquet` (with 80 % intervals and
AQI-category probabilities), scores by horizon, location, month and hour of day
(`by_*.csv`, `metrics.json`), PNG charts and `summary.txt`, which the task log prints.
`aq_backtest_mae`, `aq_backtest_skill` and `aq_backtest_interval_coverage` are pushed to
the Pushgateway. One run at a time; no schedule.
"""


@dag(
    dag_id="aq_backtest",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    doc_md=DOC,
    tags=["aq", "evaluation"],
    params={
        "start": Param(None, type=["null", "string"], format="date",
                       title="Window start (UTC, first target day)",
                       description="Empty: the last backtest.days days of data."),
        "end": Param(None, type=["null", "string"], format="date",
                     title="Window end (UTC, exclusive)",
                     description="Empty: the hour after the newest observation."),
        "model": Param("champion", type="string", pattern=r"^[A-Za-z0-9_.-]+$",
                       title="Model", examples=["champion", "candidate"],
                       description="champion, candidate or a registry version."),
        "refit_every_days": Param(0, type="number", minimum=0, maximum=365,
                                  title="Refit every N days",
                                  description="0: the model as trained (no refit)."),
    },
)
def aq_backtest():
    @task(execution_timeout=timedelta(hours=2))
    def backtest() -> dict[str, Any]:
        """Run the backtest step with the form's values; outputs in backtests/<run id>/."""
        import re

        from pipeline.context import Context
        from pipeline.steps import backtest as step

        context = get_current_context()
        params = context["params"]
        run_dir = "backtests/" + re.sub(r"[^A-Za-z0-9_.-]", "_", context["run_id"])
        report = step.run(Context.load(project_dir()), start=params.get("start") or None,
                          end=params.get("end") or None, model=params.get("model") or None,
                          refit_every=params.get("refit_every_days"), out=run_dir)
        return {"path": run_dir, "window": report["window"], "model": report["model"],
                "scores": report["scores"]}

    backtest()


aq_backtest()
