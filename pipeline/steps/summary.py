"""The short table `make run` ends with: per horizon MAE, persistence MAE and skill."""

from __future__ import annotations

from pipeline.context import Context
from pipeline.io.storage import read_json
from pipeline.steps.common import require


def render(evaluation: dict, promotion: dict, forecast: dict | None) -> str:
    lines = []
    for target, by_h in evaluation["scores"].items():
        lines.append(f"{target}: candidate {evaluation['version']} on the holdout from "
                     f"{evaluation['holdout_start'][:10]}")
        lines.append(f"  {'horizon':>8} {'MAE':>8} {'persist.':>9} {'skill':>7} {'AQI acc':>8}")
        for h, s in sorted(by_h.items(), key=lambda kv: int(kv[0])):
            lines.append(f"  {h + ' h':>8} {s['mae']:8.2f} {s['persistence_mae']:9.2f} "
                         f"{s['skill']:7.3f} {s['aqi_category_accuracy']:8.1%}")
    status = "promoted" if promotion["promoted"] else "not promoted"
    lines.append(f"candidate {status}; champion: {promotion['champion']}")
    for refusal in promotion.get("refusals") or []:
        lines.append(f"  refused: {refusal}")
    if forecast:
        lines.append(f"forecasts: {forecast['rows']} rows issued at {forecast['issue_time']} "
                     f"-> {forecast['path']}")
    return "\n".join(lines)


def run(ctx: Context) -> str:
    evaluation = read_json(require(ctx.paths.evaluation_report, "evaluate"))
    promotion = read_json(require(ctx.paths.promotion_report, "promote"))
    forecast = read_json(ctx.paths.forecast_report) if ctx.paths.forecast_report.exists() else None
    text = render(evaluation, promotion, forecast)
    print(text)
    return text
