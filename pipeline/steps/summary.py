"""The short table `make run` ends with: the stored data per location (first and last hour,
missing hours, quarantined rows, catch-up), per horizon MAE, persistence MAE and skill, the
last promotion decision (refusals with their reasons), the real champion (from its pointer,
not from the last promotion report) and the latest forecasts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.context import Context
from pipeline.core.keys import unnest
from pipeline.io.catchup import CatchUpLog
from pipeline.io.registry import Registry
from pipeline.io.storage import raw_files, read_state_json, stored_times

NOTHING_YET = (
    "nothing to summarise yet: no model has been trained and evaluated here.\n"
    "On a fresh clone run `make run` (everything), or `python -m pipeline ingest` (it "
    "regenerates the default data exactly as data.dvc records it) and then `dvc repro`."
)


@dataclass(frozen=True)
class StoredData:
    """What the raw store holds for one location."""

    location: str
    first: pd.Timestamp | None
    last: pd.Timestamp | None
    missing_hours: int  # hours between first and last with no stored row
    longest_gap: tuple[pd.Timestamp, int] | None  # (first missing hour, hours)
    quarantined: int  # rows refused at ingestion (data/quarantine)
    catch_up: str  # "settled", or where a running catch-up is heading


def stored_data(ctx: Context) -> list[StoredData]:
    """Per configured location: extents, gaps, quarantine and catch-up of the raw store."""
    source = ctx.params.source.kind
    pending = {p.location: p for p in CatchUpLog(ctx.paths.ingest_state_dir,
                                                 source).in_progress()}
    quarantined = quarantined_rows(ctx.paths.ingest_quarantine_dir / f"source={source}")
    out = []
    for loc in ctx.params.location_ids:
        times = stored_times(ctx.paths.raw_dir, source, loc, pd.Timestamp.min.tz_localize("UTC"),
                             pd.Timestamp.max.tz_localize("UTC")) \
            if raw_files(ctx.paths.raw_dir, source, [loc]) else pd.DatetimeIndex([], tz="UTC")
        times = times.unique().sort_values()
        gap = None
        missing = 0
        if len(times) > 1:
            steps = np.rint(((times[1:] - times[:-1]) / pd.Timedelta(hours=1)).to_numpy()
                            ).astype(np.int64) - 1
            missing = int(steps.sum())
            if missing:
                at = int(steps.argmax())
                gap = (times[at] + pd.Timedelta(hours=1), int(steps[at]))
        running = pending.get(loc)
        out.append(StoredData(
            loc, times[0] if len(times) else None, times[-1] if len(times) else None,
            missing, gap, quarantined.get(loc, 0),
            f"catching up to {running.to:%Y-%m-%d %H:%M}" if running else "settled"))
    return out


def quarantined_rows(directory) -> dict[str, int]:
    """Rows refused at ingestion per location (only the location column is read)."""
    counts: dict[str, int] = {}
    for path in sorted(directory.glob("*.parquet")) if directory.is_dir() else []:
        try:
            column = pq.read_table(path, columns=["location_id"]).column("location_id")
        except (OSError, KeyError, ValueError):
            continue  # a file without locations says nothing per location
        for loc, n in pd.Series(column.to_pandas()).value_counts().items():
            counts[str(loc)] = counts.get(str(loc), 0) + int(n)
    return counts


def render_data(source: str, rows: list[StoredData]) -> list[str]:
    if not rows or all(r.first is None for r in rows):
        return [f"data: nothing stored yet for source {source}"]

    def hour(ts):
        return "-" if ts is None else f"{ts:%Y-%m-%d %H:%M}"

    width = max(8, *(len(r.location) for r in rows))
    lines = [f"data (source {source}, UTC hours):",
             f"  {'location':<{width}} {'first stored':>16} {'last stored':>16} "
             f"{'missing h':>9}  {'longest gap':<26} {'quarantined':>11}  catch-up"]
    for r in rows:
        gap = "-" if r.longest_gap is None else \
            f"{r.longest_gap[1]} h from {r.longest_gap[0]:%Y-%m-%d %H:%M}"
        lines.append(f"  {r.location:<{width}} {hour(r.first):>16} {hour(r.last):>16} "
                     f"{r.missing_hours:>9}  {gap:<26} {r.quarantined:>11}  {r.catch_up}")
    return lines


def render(evaluation: dict | None, promotion: dict | None, forecast: dict | None,
           champion: dict | None, data: list[str] | None = None) -> str:
    lines = list(data or [])
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
        status = "promoted" if promotion["promoted"] else "REFUSED by the promotion gate"
        when = f" ({promotion['decided_at'][:16]})" if promotion.get("decided_at") else ""
        lines.append(f"candidate {promotion['candidate']} {status}{when}")
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
    data = render_data(ctx.params.source.kind, stored_data(ctx))
    if evaluation is None and champion is None:
        text = NOTHING_YET if data[0].startswith("data: nothing") else \
            "\n".join([*data, "champion: none yet (run `dvc repro`)"])
        print(text)
        return text
    promotion = _optional(paths.promotion_report, "promotion report",
                          "run `python -m pipeline promote` again")
    forecast = _optional(paths.forecast_report, "forecast report",
                         "run `python -m pipeline predict` again")
    text = render(evaluation, promotion, forecast, champion, data)
    print(text)
    return text
