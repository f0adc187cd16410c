"""The promotion gate: the candidate becomes champion only if it beats persistence on
every target x horizon and does not regress against the champion on the same holdout."""

from __future__ import annotations

import logging
import time

import pandas as pd

from pipeline.context import Context
from pipeline.core.keys import ModelKey, unnest
from pipeline.core.models import Split
from pipeline.errors import PipelineError
from pipeline.io.feature_store import FeatureStore
from pipeline.io.holdout import summarise_holdout
from pipeline.io.registry import ModelBundle, Registry, push_champion
from pipeline.io.storage import atomic_write_json, read_state_json, require_keys
from pipeline.io.tracking import log_run, promote_run
from pipeline.steps.common import require
from pipeline.timeutil import now_utc

log = logging.getLogger(__name__)


def champion_scores(champion: ModelBundle, store: FeatureStore, split: Split,
                    wanted: set[ModelKey]) -> tuple[dict | None, str | None]:
    """Re-score the champion on the candidate's holdout; (None, why) if it cannot be."""
    columns = set(store.columns())
    missing = [f for f in champion.metadata["features"] if f not in columns]
    if missing:
        return None, f"champion needs features not built any more: {missing[:5]}"
    models = {key: m for key, m in champion.models.items() if key in wanted}
    if set(models) != wanted:
        return None, "champion does not cover every target x horizon of the candidate"
    try:
        return summarise_holdout(store, models, split).scores(), None
    except ValueError as exc:
        return None, f"champion cannot be scored on the candidate's holdout: {exc}"


def decide(candidate: dict, champion: dict | None, min_skill: float,
           tolerance: float) -> tuple[bool, list[str]]:
    """Pure gate logic; returns (promote, reasons it was refused)."""
    refusals = []
    for target, by_h in candidate.items():
        for horizon, s in by_h.items():
            if not s["skill"] > min_skill:
                refusals.append(
                    f"{target} h={horizon}: skill {s['skill']:.4f} does not beat persistence "
                    f"(needs > {min_skill})"
                )
            if champion is not None:
                champ_mae = champion[target][horizon]["mae"]
                if s["mae"] > champ_mae * (1 + tolerance):
                    refusals.append(
                        f"{target} h={horizon}: MAE {s['mae']:.4f} regresses against champion "
                        f"{champ_mae:.4f} beyond tolerance {tolerance:.0%}"
                    )
    return not refusals, refusals


def coverage_refusals(candidate: dict, champion: dict) -> tuple[list[str], str | None]:
    """What the candidate's data leaves out that the champion's had (model metadata).

    A holdout without a location the champion was evaluated on says nothing about it (a
    store caught up half-way gives a holdout of the locations that got furthest); a location
    whose data ends before the champion's means the candidate was trained on older data.
    Returns (refusals, a note when the champion predates per-location extents).
    """
    ours, theirs = candidate.get("location_extents"), champion.get("location_extents")
    if not ours or not theirs:
        return [], ("champion or candidate has no per-location extents (trained before they "
                    "were recorded): coverage not compared")
    refusals = []
    served = sorted(loc for loc, e in theirs.items() if e.get("holdout_rows"))
    missing = [loc for loc in served if not (ours.get(loc) or {}).get("holdout_rows")]
    if missing:
        ends = ", ".join(f"{loc} (data to {(ours.get(loc) or {}).get('train_last_hour')})"
                         for loc in missing[:10])
        refusals.append(
            f"holdout leaves out {len(missing)} location(s) the champion serves: {ends}; "
            f"the holdout starts {candidate.get('holdout_start')}: was the store still being "
            "caught up?")
    older = [f"{loc} ({ours[loc]['holdout_last_hour']} < {theirs[loc]['holdout_last_hour']})"
             for loc in served if loc not in missing and ours.get(loc)
             and ours[loc]["holdout_last_hour"] < theirs[loc]["holdout_last_hour"]]
    if older:
        refusals.append(f"data ends before the champion's for {len(older)} location(s): "
                        + ", ".join(older[:10]))
    return refusals, None


def run(ctx: Context) -> dict:
    with ctx.reporter.step("promote") as metrics:
        registry = Registry(ctx.paths)
        path = require(ctx.paths.evaluation_report, "evaluate")
        redo = "run `python -m pipeline evaluate` again"
        evaluation = require_keys(read_state_json(path, "evaluation report", redo),
                                  ("version", "scores", "holdout_start"), path,
                                  "evaluation report", redo)
        require(ctx.paths.candidate_dir, "train")
        # verified before it enters the registry; decide and switch under the champion lock,
        # so two promotes at once leave one winner and one history entry
        version = registry.register(ctx.paths.candidate_dir)
        if evaluation["version"] != version:
            raise PipelineError(
                f"evaluation is of {evaluation['version']}, candidate is {version}: {redo}"
            )
        with registry.champion_lock():
            report = _gate(ctx, registry, evaluation, version)
        atomic_write_json(ctx.paths.promotion_report, report)
        metrics.set("aq_promotion_promoted", 1 if report["promoted"] else 0)
        if not report["promoted"]:  # the dashboards mark it; kept until the next refusal
            metrics.set("aq_promotion_refused_timestamp_seconds", time.time())
        push_champion(ctx.reporter, registry,
                      switched_by="promote" if report["switched"] else None)
        if report["switched"]:
            log.info("promote: %s is the new champion (was %s)", version,
                     report["previous_champion"])
        elif report["promoted"]:
            log.info("promote: %s passed the gate and stays champion", version)
        else:
            log.warning("promote: %s not promoted: %s", version,
                        "; ".join(report["refusals"]) or report["note"])
        log_run(ctx, promote_run(ctx.paths.root, report, ctx.paths.registry_dir,
                                 registry.metadata(version)["sha256"], metrics.started))
    return report


def _gate(ctx: Context, registry: Registry, evaluation: dict, version: str) -> dict:
    """The gate against the current champion, re-scored on the candidate's holdout."""
    candidate = evaluation["scores"]
    champion_version = registry.champion_version()
    champ, note = None, None
    if champion_version == version:
        note = "candidate is already the champion"
    elif champion_version is not None:
        store = FeatureStore(require(ctx.paths.features, "preprocess"),
                             ctx.settings.batch_locations)
        split = Split(pd.Timestamp(evaluation["holdout_start"]))
        champ, note = champion_scores(registry.load_champion(), store, split,
                                      set(unnest(candidate)))
    promoted, refusals = decide(candidate, champ, ctx.params.promotion.min_skill,
                                ctx.params.promotion.tolerance)
    candidate_meta = registry.metadata(version)
    if champion_version is not None and champion_version != version:
        coverage, coverage_note = coverage_refusals(candidate_meta,
                                                    registry.metadata(champion_version))
        refusals = coverage + refusals
        promoted = promoted and not coverage
        note = note or coverage_note
    switched = False
    if promoted and champion_version != version:
        switched = registry.promote(version, reason="passed the promotion gate")
    return {
        "candidate": version,
        "previous_champion": champion_version,
        "champion": registry.champion_version(),
        "promoted": promoted,
        "switched": switched,
        "refusals": refusals,
        "note": note,
        "champion_scores_on_holdout": champ,
        # what the candidate was built from: the data version and each location's extents
        "data_version": candidate_meta.get("data_version"),
        "location_extents": candidate_meta.get("location_extents"),
        "decided_at": now_utc().isoformat(),
    }
