"""Batch forecasts with the champion from each location's latest data."""

from __future__ import annotations

from pipeline.context import Context
from pipeline.io.registry import Registry
from pipeline.steps.forecasting import issue_forecasts


def run(ctx: Context) -> dict:
    with ctx.reporter.step("predict") as metrics:
        return issue_forecasts(ctx, Registry(ctx.paths).load_champion(), metrics)
