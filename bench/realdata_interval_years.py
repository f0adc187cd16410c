"""Does an interval calibrated on one year hold on the next? Year-to-year checks inside the
training period, for choosing how the interval scales (``pipeline/core/intervals.py``).

From a project ``bench_realdata.py`` left (``--workdir``: its features and its candidate's
chosen settings), for each year Y: the chosen settings of each target x horizon fitted on
the rows before Y (a seeded sample of at most 150,000 rows, as the search fits), and their
forecasts of Y's rows. Calibrated on year Y, each scale is then scored on year Y + 1: the
coverage of the 80 % interval (per location, as the pipeline does), and the scale
``calibrate`` chooses on year Y alone (``block_deviation``). The test year's own pair is the
last; the choice was made on the earlier pairs.

Each pair also records the choice made with the volatility at each of ``--powers`` (the
relative spread stays at power 1): ``chosen_p<k>``, ``coverage_chosen_p<k>``; the summary
printed at the end is the mean distance of each power's coverage from 80 % over the pairs
before the test year. ``--forecasts`` keeps the yearly forecasts (Parquet) and reuses them.

    .venv/bin/python bench/realdata_interval_years.py /tmp/rd/detroit-test \\
        --years 2019-2025 --targets pm2_5 --out bench/results/interval_years_detroit.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.features import label_column  # noqa: E402
from pipeline.core.intervals import (  # noqa: E402
    block_deviation,
    calibrate,
    scale_candidates,
    scale_input,
    scale_values,
)
from pipeline.core.models import fit_one  # noqa: E402
from pipeline.io.feature_store import FeatureStore  # noqa: E402


def yearly_forecasts(project: Path, years: list[int], targets: list[str]) -> pd.DataFrame:
    meta = json.loads((project / "build" / "candidate" / "metadata.json").read_text())
    frame = FeatureStore(project / "build" / "features").sample(meta["train_sample"]["rate"], 0)
    pieces = []
    with threadpool_limits(1, user_api="openmp"):
        for target in targets:
            candidates = scale_candidates(target, frame.columns)
            for h in meta["horizons"]:
                for year in years:
                    start = pd.Timestamp(f"{year}-01-01", tz="UTC")
                    rows = frame[(frame["time"] >= start)
                                 & (frame["time"] < start + pd.DateOffset(years=1))
                                 & frame[label_column(target, h)].notna()]
                    if rows.empty:
                        continue
                    model = fit_one(frame, meta["features"], target, h,
                                    meta["settings"][target][str(h)], start, 150_000, 0)
                    piece = pd.DataFrame({
                        "target": target, "horizon": h, "year": year,
                        "location_id": rows["location_id"].to_numpy(),
                        "time": rows["time"].to_numpy(),
                        "observed": rows[label_column(target, h)].to_numpy(float),
                        "predicted": model.predict(rows)})
                    for i, spec in enumerate(candidates):
                        piece[f"scale{i}"] = scale_input(spec, lambda c, r=rows: r[c].to_numpy(
                            float))
                    pieces.append(piece)
                    print(target, h, year, len(rows), flush=True)
    return pd.concat(pieces, ignore_index=True)


def coverage(calibration: dict, test: pd.DataFrame, column: str | None) -> float:
    scale = calibration.get("scale")
    z = (np.log1p(test["observed"].clip(lower=0)) - np.log1p(test["predicted"].clip(lower=0))
         ) / scale_values(test[column] if column else None, scale)
    inside = np.zeros(len(test), bool)
    for location, index in test.groupby("location_id").indices.items():
        q = calibration["by_location"].get(str(location), calibration["quantiles"])
        inside[index] = (z.iloc[index] >= q[9]) & (z.iloc[index] <= q[89])  # levels 0.10, 0.90
    return float(inside.mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--years", required=True, help="first-last, e.g. 2019-2025")
    parser.add_argument("--targets", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--powers", default="0.5,1",
                        help="the volatility's powers to compare (comma-separated)")
    parser.add_argument("--forecasts", type=Path,
                        help="the yearly forecasts as Parquet: read when it exists, else written")
    args = parser.parse_args()
    first, last = (int(y) for y in args.years.split("-"))
    if args.forecasts is not None and args.forecasts.exists():
        forecasts = pd.read_parquet(args.forecasts)
    else:
        forecasts = yearly_forecasts(args.project, list(range(first, last + 1)),
                                     args.targets.split(","))
        if args.forecasts is not None:
            forecasts.to_parquet(args.forecasts, index=False)
    powers = [float(p) for p in args.powers.split(",")]
    records = []
    for (target, h), part in forecasts.groupby(["target", "horizon"]):
        candidates = scale_candidates(target, _candidate_columns(target))
        years = sorted(part["year"].unique())
        for year in years[:-1]:
            window, test = part[part["year"] == year], part[part["year"] == year + 1]
            record = {"target": target, "horizon": h, "calibrated_on": year,
                      "scored_on": year + 1}
            args_ = (window["observed"].to_numpy(), window["predicted"].to_numpy(),
                     window["location_id"].to_numpy())
            for i, spec in enumerate(candidates):
                one = calibrate(*args_, scales=[(spec, window[f"scale{i}"].to_numpy())])
                name = spec["column"].split("_")[-1]
                record[f"coverage_{name}"] = round(coverage(one, test, f"scale{i}"), 4)
                record[f"block_deviation_{name}"] = round(block_deviation(
                    *args_, scale_values(window[f"scale{i}"].to_numpy(), one["scale"]),
                    window["time"].to_numpy()), 4)
            chosen = calibrate(*args_, scales=[(s, window[f"scale{i}"].to_numpy())
                                               for i, s in enumerate(candidates)],
                               times=window["time"].to_numpy())
            index = next(i for i, s in enumerate(candidates)
                         if s["column"] == chosen["scale"]["column"])
            record["chosen"] = chosen["scale"]["column"].split("_")[-1]
            record["coverage_chosen"] = round(coverage(chosen, test, f"scale{index}"), 4)
            for power in powers:
                specs = [{**s, "power": power} if "per" not in s else s for s in candidates]
                chosen = calibrate(*args_, scales=[(s, window[f"scale{i}"].to_numpy())
                                                   for i, s in enumerate(specs)],
                                   times=window["time"].to_numpy())
                index = next(i for i, s in enumerate(specs)
                             if s["column"] == chosen["scale"]["column"])
                record[f"chosen_p{power:g}"] = chosen["scale"]["column"].split("_")[-1]
                record[f"coverage_chosen_p{power:g}"] = round(
                    coverage(chosen, test, f"scale{index}"), 4)
            records.append(record)
            print(record, flush=True)
    table = pd.DataFrame(records)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(summary(table, powers))
    return 0


def summary(table: pd.DataFrame, powers: list[float]) -> str:
    """Per power of the volatility: the mean |coverage - 80 %| and the share of pairs inside
    78-82 %, over the pairs scored before the last year (the test year only checks)."""
    before = table[table["scored_on"] < table["scored_on"].max()]
    lines = []
    for power in powers:
        miss = (before[f"coverage_chosen_p{power:g}"] - 0.8).abs()
        lines.append(f"volatility ** {power:g}: mean |coverage - 80 %| {miss.mean():.4f}, "
                     f"inside 78-82 % {(miss <= 0.02).mean():.0%} of {len(miss)} pairs")
    return "\n".join(lines)


def _candidate_columns(target: str) -> list[str]:
    """Every column the candidates may read (all present in the pipeline's default features)."""
    from pipeline.core.features import spread_columns, volatility_column
    return [volatility_column(target), *spread_columns(target)]


if __name__ == "__main__":
    sys.exit(main())
