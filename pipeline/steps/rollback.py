"""Restore the previous champion (the pointer switch is atomic)."""

from __future__ import annotations

import logging

from pipeline.context import Context
from pipeline.io.registry import Registry
from pipeline.steps.promote import push_champion

log = logging.getLogger(__name__)


def run(ctx: Context) -> str:
    with ctx.reporter.step("rollback"):
        registry = Registry(ctx.paths)
        current = registry.champion_version()
        restored = registry.rollback()
        push_champion(ctx.reporter, registry)
        log.info("rollback: champion %s -> %s", current, restored)
        print(f"champion is now {restored} (was {current})")
    return restored
