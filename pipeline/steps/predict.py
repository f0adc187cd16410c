"""Batch forecasts with the champion from each location's latest data.

``python -m pipeline predict`` forecasts every location, a batch at a time (the DVC stage).
A mapped Airflow run splits it: ``--locations a,b`` forecasts one batch into
``predictions/pending/`` (any worker), ``--finalize`` publishes them all as one run
(``predictions/run=.../forecasts.parquet``, ``latest.parquet``, ``reports/forecast.json``,
the metrics).
"""

from __future__ import annotations

from pipeline.context import Context
from pipeline.errors import PipelineError
from pipeline.forecaster import Champion
from pipeline.io.registry import Registry
from pipeline.steps.common import parse_locations
from pipeline.steps.forecasting import issue_forecasts, publish_pending, write_pending


def run(ctx: Context, locations: str | None = None, finalize_only: bool = False) -> dict:
    if locations is not None and finalize_only:
        raise PipelineError("predict: give --locations (forecast one batch) or --finalize "
                            "(publish the batches), not both")
    # everything that can fail runs inside the step's report (a predict before any champion
    # must push its failure like any other step)
    if locations is not None:
        with ctx.reporter.step("predict_batch") as metrics:
            chosen = parse_locations(ctx, locations)
            champion = Champion.of(Registry(ctx.paths).load_champion())
            rows = write_pending(ctx, champion, chosen)
            metrics.rows(rows_out=rows)
        return {"locations": chosen, "rows": rows}
    with ctx.reporter.step("predict") as metrics:
        champion = Champion.of(Registry(ctx.paths).load_champion())
        if finalize_only:
            return publish_pending(ctx, champion, metrics)
        return issue_forecasts(ctx, champion, metrics)
