"""Interval coverage on the real data, recomputed from saved forecasts (no refitting).

``realdata_experiments.py`` with ``AQ_REALDATA_SAVE=DIR`` saves, per run, the chosen models'
forecasts of the calibration window and of the scored period. This recomputes the 80 %
interval of the scored period with other calibrations (``pipeline.core.intervals``): the
scale's power, the length of the calibration window (its last N days), pooled or per location.

    .venv/bin/python bench/realdata_intervals.py /tmp/m19/save/beijing-val365-2013
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core import intervals  # noqa: E402
from pipeline.core.features import volatility_column  # noqa: E402


def coverage(stem: Path, power: float, days: int | None, per_location: bool = True) -> dict:
    calibration = pd.read_parquet(f"{stem}-calibration.parquet")
    window = pd.read_parquet(f"{stem}-window.parquet")
    vol = pd.read_parquet(f"{stem}-volatility.parquet")
    window = window.merge(vol.rename(columns={"time": "origin"}), on=["location_id", "origin"],
                          how="left")
    window = window[window["observed"].notna() & window["persistence"].notna()
                    & window["seasonal_naive"].notna()]
    out = {}
    old = intervals.SCALE_POWER
    intervals.SCALE_POWER = power
    try:
        for (target, horizon), cal in calibration.groupby(["target", "horizon"]):
            if days is not None:
                cal = cal[cal["origin"] >= cal["origin"].max() - pd.Timedelta(days=days)]
            column = volatility_column(target)
            c = intervals.calibrate(cal["observed"], cal["predicted"], cal["location_id"],
                                    cal[column] if power else None, column if power else None)
            if not per_location:
                c["by_location"] = {}
            part = window[(window["target"] == target) & (window["horizon"] == horizon)]
            unc = {"coverage": 0.8, "by_model": {target: {str(horizon): c}}}
            frame = part.drop(columns=["lower", "upper"]).rename(columns={"value": "value"})
            with_interval = intervals.add_uncertainty(frame, unc)
            inside = ((with_interval["observed"] >= with_interval["lower"])
                      & (with_interval["observed"] <= with_interval["upper"]))
            out[(target, int(horizon))] = round(float(inside.mean()), 3)
    finally:
        intervals.SCALE_POWER = old
    return out


def main(argv: list[str]) -> int:
    for stem in argv:
        print(stem)
        for days in (None, 28, 91):
            for power in (0.0, 0.5, 1.0):
                for per_location in (True, False):
                    cov = coverage(Path(stem), power, days, per_location)
                    print(f"  days={days} power={power} per_location={per_location}: "
                          + "  ".join(f"{t} h{h} {v:.3f}" for (t, h), v in cov.items()))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main(sys.argv[1:]))
