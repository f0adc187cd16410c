"""The promotion gate: the candidate becomes champion only if it beats persistence on
every target x horizon and does not regress against the champion on the same holdout."""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.context import Context
from pipeline.core.models import Split, evaluate_models
from pipeline.errors import PipelineError
from pipeline.io.metrics import MetricsReporter, StepRun
from pipeline.io.registry import ModelBundle, Registry
from pipeline.io.storage import atomic_write_json, read_json
from pipeline.steps.common import require

log = logging.getLogger(__name__)


def champion_scores(champion: ModelBundle, frame: pd.DataFrame, split: Split,
                    wanted: set[tuple[str, int]]) -> tuple[dict | None, str | None]:
    """Re-score the champion on the candidate's holdout; (None, why) if it cannot be."""
    missing = [f for f in champion.metadata["features"] if f not in frame.columns]
    if missing:
        return None, f"champion needs features not built any more: {missing[:5]}"
    models = {key: m for key, m in champion.models.items() if key in wanted}
    if set(models) != wanted:
        return None, "champion does not cover every target x horizon of the candidate"
    scores, _ = evaluate_models(models, frame, split)
    return scores, None


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


def push_champion(reporter: MetricsReporter, registry: Registry) -> None:
    """Push the current champion under its own group (step="champion").

    Promote and rollback both change the champion; one group means the latest
    change wins, whichever step made it, and a failing step cannot make an older
    champion look current.
    """
    version = registry.champion_version()
    if version is None:
        return
    meta = read_json(registry.version_dir(version) / "metadata.json")
    run = StepRun("champion")
    run.info("aq_champion_info", {"version": version})
    run.set("aq_champion_created_timestamp_seconds", pd.Timestamp(meta["created_at"]).timestamp())
    reporter.push(run)


def run(ctx: Context) -> dict:
    with ctx.reporter.step("promote") as metrics:
        registry = Registry(ctx.paths)
        evaluation = read_json(require(ctx.paths.evaluation_report, "evaluate"))
        require(ctx.paths.candidate_dir, "train")
        version = registry.register(ctx.paths.candidate_dir)
        if evaluation["version"] != version:
            raise PipelineError(
                f"evaluation is of {evaluation['version']}, candidate is {version}: "
                "run `python -m pipeline evaluate` again"
            )
        candidate = evaluation["scores"]
        champion_version = registry.champion_version()
        champ, note = None, None
        if champion_version == version:
            note = "candidate is already the champion"
        elif champion_version is not None:
            frame = pd.read_parquet(require(ctx.paths.features, "preprocess"))
            split = Split(pd.Timestamp(evaluation["holdout_start"]))
            wanted = {(t, int(h)) for t, by_h in candidate.items() for h in by_h}
            champ, note = champion_scores(registry.load_champion(), frame, split, wanted)
            if champ is not None:
                champ = {t: {str(h): s for h, s in by_h.items()} for t, by_h in champ.items()}
        promoted, refusals = decide(candidate, champ, ctx.params.promotion.min_skill,
                                    ctx.params.promotion.tolerance)
        if promoted and champion_version != version:
            registry.promote(version, reason="passed the promotion gate")
        report = {
            "candidate": version,
            "previous_champion": champion_version,
            "champion": registry.champion_version(),
            "promoted": promoted,
            "switched": promoted and champion_version != version,
            "refusals": refusals,
            "note": note,
            "champion_scores_on_holdout": champ,
        }
        atomic_write_json(ctx.paths.promotion_report, report)
        metrics.set("aq_promotion_promoted", 1 if report["promoted"] else 0)
        push_champion(ctx.reporter, registry)
        if report["switched"]:
            log.info("promote: %s is the new champion (was %s)", version, champion_version)
        elif promoted:
            log.info("promote: %s passed the gate and stays champion", version)
        else:
            log.warning("promote: %s not promoted: %s", version, "; ".join(refusals) or note)
    return report
