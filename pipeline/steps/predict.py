"""Batch forecasts with the champion from each location's latest data.

``python -m pipeline predict`` forecasts every location, a batch at a time (the DVC stage).
A mapped Airflow run splits it: ``--locations a,b`` forecasts one batch into
``predictions/pending/`` (any worker), ``--finalize`` publishes them all as one run
(``predictions/run=.../forecasts.parquet``, ``latest.parquet``, ``reports/forecast.json``,
the metrics).
"""

from __future__ import annotations

import logging

from pipeline.context import Context
from pipeline.errors import PipelineError
from pipeline.forecaster import Champion
from pipeline.io.feature_store import location_batches
from pipeline.io.registry import Registry
from pipeline.steps.common import parse_locations
from pipeline.steps.forecasting import (
    StaleBatchesError,
    issue_forecasts,
    publish_pending,
    write_pending,
)

log = logging.getLogger(__name__)


def model_for(ctx: Context, model: str | None) -> Champion:
    """The champion, or the version a mapped run pinned at its start (``--model``)."""
    registry = Registry(ctx.paths)
    return Champion.of(registry.load_champion() if model is None else registry.load(model))


def run(ctx: Context, locations: str | None = None, finalize_only: bool = False,
        model: str | None = None) -> dict:
    """``model``: the registry version a mapped run forecasts with from its first batch to its
    finalisation, whatever the champion becomes meanwhile (default: the champion now)."""
    if locations is not None and finalize_only:
        raise PipelineError("predict: give --locations (forecast one batch) or --finalize "
                            "(publish the batches), not both")
    # everything that can fail runs inside the step's report (a predict before any champion
    # must push its failure like any other step)
    if locations is not None:
        with ctx.reporter.step("predict_batch") as metrics:
            chosen = parse_locations(ctx, locations)
            champion = model_for(ctx, model)
            rows = write_pending(ctx, champion, chosen)
            metrics.rows(rows_out=rows)
        return {"locations": chosen, "rows": rows}
    with ctx.reporter.step("predict") as metrics:
        champion = model_for(ctx, model)
        if not finalize_only:
            return issue_forecasts(ctx, champion, metrics)
        try:
            return publish_pending(ctx, champion, metrics)
        except StaleBatchesError as exc:
            # a retry cannot change a batch made with another model: recompute those here
            log.warning("predict: %s; forecasting those %d location(s) again with %s",
                        exc, len(exc.locations), champion.version)
            for batch in location_batches(exc.locations, ctx.settings.batch_locations):
                write_pending(ctx, champion, batch)
            return publish_pending(ctx, champion, metrics)
