"""Does an interval calibrated on one year hold on the next? Year-to-year checks inside the
training period, for choosing how the interval scales (``pipeline/core/intervals.py``).

From a project ``bench_realdata.py`` left (``--workdir``: its features and its candidate's
chosen settings), for each year Y: the chosen settings of each target x horizon fitted on
the rows before Y (a seeded sample of at most 150,000 rows, as the search fits), and their
forecasts of Y's rows. Calibrated on year Y, each scale is then scored on year Y + 1: the
coverage of the 80 % interval (per location, as the pipeline does), and the scale
``calibrate`` chooses on year Y alone (``block_deviation``). The test year's own pair is the
last; the choice was made on the earlier pairs.

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
    args = parser.parse_args()
    first, last = (int(y) for y in args.years.split("-"))
    forecasts = yearly_forecasts(args.project, list(range(first, last + 1)),
                                 args.targets.split(","))
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
            records.append(record)
            print(record, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(records).to_csv(args.out, index=False)
    return 0


def _candidate_columns(target: str) -> list[str]:
    """Every column the candidates may read (all present in the pipeline's default features)."""
    from pipeline.core.features import spread_columns, volatility_column
    return [volatility_column(target), *spread_columns(target)]


if __name__ == "__main__":
    sys.exit(main())
