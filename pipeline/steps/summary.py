"""The short table `make run` ends with: per horizon MAE, persistence MAE and skill, the real
champion (from its pointer, not from the last promotion report) and the latest forecasts."""

from __future__ import annotations

from pipeline.context import Context
from pipeline.core.keys import unnest
from pipeline.io.registry import Registry
from pipeline.io.storage import read_state_json

NOTHING_YET = (
    "nothing to summarise yet: no model has been trained and evaluated here.\n"
    "On a fresh clone run `make run` (everything), or `python -m pipeline ingest` (it "
    "regenerates the default data exactly as data.dvc records it) and then `dvc repro`."
)


def render(evaluation: dict | None, promotion: dict | None, forecast: dict | None,
           champion: dict | None) -> str:
    lines = []
    if evaluation:
        for target, by_h in evaluation["scores"].items():
            lines.append(f"{target}: candidate {evaluation['version']} on the holdout from "
                         f"{evaluation['holdout_start'][:10]}")
            lines.append(f"  {'horizon':>8} {'MAE':>8} {'persist.':>9} {'skill':>7} "
                         f"{'AQI acc':>8}")
            for key, s in sorted(unnest({target: by_h}).items()):
                lines.append(f"  {key.hours + ' h':>8} {s['mae']:8.2f} {s['persistence_mae']:9.2f} "
                             f"{s['skill']:7.3f} {s['aqi_category_accuracy']:8.1%}")
    if promotion:
        status = "promoted" if promotion["promoted"] else "not promoted"
        lines.append(f"candidate {promotion['candidate']} {status}")
        for refusal in promotion.get("refusals") or []:
            lines.append(f"  refused: {refusal}")
    if champion:
        lines.append(f"champion: {champion['version']} (since {champion.get('at', '?')[:19]}, "
                     f"{champion.get('reason', 'promoted')})")
    else:
        lines.append("champion: none yet")
    if forecast:
        lines.append(f"forecasts: {forecast['rows']} rows issued at {forecast['issue_time']} "
                     f"with {forecast['model_version']} -> {forecast['path']}")
        for location, why in sorted((forecast.get("withheld") or {}).items()):
            lines.append(f"  no forecast for {location}: {why}")
    return "\n".join(lines)


def _optional(path, what: str, recovery: str) -> dict | None:
    return read_state_json(path, what, recovery) if path.exists() else None


def run(ctx: Context) -> str:
    paths = ctx.paths
    champion = Registry(paths).pointer()
    evaluation = _optional(paths.evaluation_report, "evaluation report",
                           "run `python -m pipeline evaluate` again")
    if evaluation is None and champion is None:
        print(NOTHING_YET)
        return NOTHING_YET
    promotion = _optional(paths.promotion_report, "promotion report",
                          "run `python -m pipeline promote` again")
    forecast = _optional(paths.forecast_report, "forecast report",
                         "run `python -m pipeline predict` again")
    text = render(evaluation, promotion, forecast, champion)
    print(text)
    return text
