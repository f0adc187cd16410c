"""Restore the previous champion, or make a given version champion, and re-issue forecasts.

The pointer switch is atomic and recorded in ``models/champion_history.jsonl``; repeated
rollbacks walk further back, ``--to VERSION`` goes to any registered version (forward too).
"""

from __future__ import annotations

import logging

from pipeline.context import Context
from pipeline.forecaster import Champion
from pipeline.io.registry import Registry, push_champion
from pipeline.io.storage import raw_files
from pipeline.io.tracking import log_run, rollback_run
from pipeline.steps.forecasting import issue_forecasts

log = logging.getLogger(__name__)


def run(ctx: Context, to: str | None = None) -> str:
    with ctx.reporter.step("rollback") as metrics:
        registry = Registry(ctx.paths)
        current = registry.champion_version()
        restored = registry.rollback(to)
        push_champion(ctx.reporter, registry, switched_by="rollback")
        log.info("rollback: champion %s -> %s", current, restored)
        print(f"champion is now {restored} (was {current})")
        log_run(ctx, rollback_run(ctx.paths.root, current, restored, ctx.paths.registry_dir,
                                  registry.metadata(restored)["sha256"], metrics.started))
    if raw_files(ctx.paths.raw_dir, ctx.params.source.kind, ctx.params.location_ids):
        # the forecasts users read come from the new champion from now on
        with ctx.reporter.step("predict") as metrics:
            report = issue_forecasts(ctx, Champion.of(registry.load_champion()), metrics)
        print(f"forecasts re-issued with {restored}: {report['rows']} rows at "
              f"{report['issue_time']}")
    else:
        log.warning("rollback: no raw data stored yet, no forecasts re-issued")
    return restored
