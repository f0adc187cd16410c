"""Holdout scores and plot data gathered a batch of locations at a time are those of every
prediction at once: exactly (batch against batch), and against the one-pass pandas/numpy
formulas evaluate used before it streamed (to rounding for the scores, byte for byte for
the plot files)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from pipeline.core.evaluation import HoldoutSummary
from pipeline.core.intervals import LOWER, UPPER, add_uncertainty
from pipeline.core.scoring import ExactSum, exact_square, score

MODELS = [("pm2_5", 1), ("pm2_5", 6), ("no2", 1)]


def predictions(n_locations: int, hours: int, seed: int = 0) -> pd.DataFrame:
    """Holdout predictions shaped like ``holdout_predictions``' (NaN-free, as it keeps)."""
    rng = np.random.default_rng(seed)
    frames = []
    start = pd.Timestamp("2025-03-01", tz="UTC")
    for target, horizon in MODELS:
        for i in range(n_locations):
            observed = rng.gamma(2.0, 12.0, hours)
            frames.append(pd.DataFrame({
                "location_id": f"loc{i:03d}",
                "issue_time": start + pd.to_timedelta(np.arange(hours), unit="h"),
                "target": target, "horizon": horizon,
                "observed": observed,
                "predicted": np.clip(observed + rng.normal(0, 4, hours), 0, None),
                "persistence": observed * rng.uniform(0.5, 1.5, hours),
                "seasonal": observed * rng.uniform(0.3, 1.7, hours),
                "pm2_5_vol24": rng.uniform(0, 0.5, hours),
            }))
    return pd.concat(frames, ignore_index=True)


UNCERTAINTY = {"coverage": 0.8, "levels": [round(x, 2) for x in np.linspace(0.01, 0.99, 99)],
               "by_model": {"pm2_5": {str(h): {"quantiles": list(np.linspace(-0.6, 0.6, 99))}
                                      for h in (1, 6)}}}


def summarise(frame: pd.DataFrame, batch: int) -> HoldoutSummary:
    sizes = frame.groupby(["target", "horizon"]).size()
    summary = HoldoutSummary(MODELS, UNCERTAINTY, {(t, int(h)): int(n)
                                                    for (t, h), n in sizes.items()})
    locations = sorted(frame["location_id"].unique())
    for i in range(0, len(locations), batch):
        summary.add(frame[frame["location_id"].isin(locations[i:i + batch])])
    return summary


def one_pass_plots(frame: pd.DataFrame) -> dict[str, str]:
    """The plot files as evaluate wrote them from all predictions at once (before it
    streamed)."""
    ordered = frame.sort_values(["target", "horizon", "location_id", "issue_time"])
    groups = ordered.groupby(["target", "horizon"])
    step = (groups["observed"].transform("size") // 500).clip(lower=1)
    sample = ordered[groups.cumcount() % step == 0]
    errors = frame.assign(model=np.abs(frame["predicted"] - frame["observed"]),
                          persistence=np.abs(frame["persistence"] - frame["observed"]))
    by_horizon = errors.groupby(["target", "horizon"])[["model", "persistence"]].mean()
    hour = (errors["issue_time"] + pd.to_timedelta(errors["horizon"], unit="h")).dt.hour
    by_hour = errors.assign(hour=hour).groupby(["target", "hour"])[["model", "persistence"]].mean()
    return {
        "predicted_vs_observed": sample[["target", "horizon", "location_id", "observed",
                                         "predicted"]].round(3).to_csv(index=False),
        "error_by_horizon": by_horizon.reset_index().round(4).to_csv(index=False),
        "error_by_hour": by_hour.reset_index().round(4).to_csv(index=False),
    }


def test_exact_sum_is_the_exact_sum_whatever_the_batches():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0, 1e6, 5000), rng.normal(0, 1e-300, 100),
                             [5e-324, -5e-324, 1e308, -1e308, -0.0, 3.0]])
    exact = sum(Fraction(v) for v in values)
    for pieces in (1, 3, 17):
        total = ExactSum()
        for part in np.array_split(rng.permutation(values), pieces):
            total.add(part)
        assert total.fraction() == exact
    assert ExactSum().mean(0) != ExactSum().mean(0)  # NaN for no values
    with_nan, with_inf = ExactSum(), ExactSum()
    with_nan.add([1.0, np.nan])
    with_inf.add([1.0, np.inf])
    assert np.isnan(with_nan.mean(2))
    assert with_inf.mean(2) == np.inf


def test_exact_square_adds_up_to_the_square():
    x = np.random.default_rng(2).normal(0, 1e3, 500)
    product, error = exact_square(x)
    assert all(Fraction(p) + Fraction(e) == Fraction(v) ** 2
               for p, e, v in zip(product, error, x, strict=True))
    assert (error != 0).any()  # the float product alone is not exact


def test_score_equals_the_one_pass_formulas():
    rng = np.random.default_rng(3)
    y = rng.gamma(2, 10, 20000)
    p = y + rng.normal(0, 3, len(y))
    s = score("pm2_5", y, p, y * 0.8, y * 1.3)
    assert s["mae"] == pytest.approx(np.mean(np.abs(y - p)), rel=1e-14)
    assert s["rmse"] == pytest.approx(np.sqrt(np.mean((y - p) ** 2)), rel=1e-14)
    assert s["r2"] == pytest.approx(1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2),
                                    rel=1e-13)
    assert s["n"] == len(y)


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_a_batch_of_locations_at_a_time_reports_what_all_at_once_does(batch):
    frame = predictions(n_locations=9, hours=24 * 40)  # > 500 rows per model: sampled
    whole, batched = summarise(frame, 9), summarise(frame, batch)
    assert batched.scores() == whole.scores()  # exactly, to the last bit
    plots = batched.plots()
    for name, table in whole.plots().items():
        assert plots[name].to_csv(index=False) == table.to_csv(index=False), name
    assert (batched.rows_in, batched.rows_out) == (whole.rows_in, whole.rows_out)
    assert whole.rows_out == len(frame)
    assert whole.rows_in == len(frame[["location_id", "issue_time"]].drop_duplicates())


def test_the_streamed_reports_are_those_of_the_one_pass_formulas():
    frame = predictions(n_locations=6, hours=24 * 30)
    summary = summarise(frame, 2)
    # the plot files byte for byte as evaluate wrote them from every prediction at once
    plots = summary.plots()
    for name, text in one_pass_plots(frame).items():
        assert plots[name].to_csv(index=False) == text, name
    assert len(plots["predicted_vs_observed"]) < len(frame) / 3 + 10  # a sample
    scores = summary.scores()
    for (target, horizon), part in frame.groupby(["target", "horizon"]):
        expected = score(target, part["observed"], part["predicted"], part["persistence"],
                         part["seasonal"])
        got = scores[target][str(horizon)]
        assert {k: got[k] for k in expected} == expected
        assert got["mae"] == pytest.approx(np.mean(np.abs(part["observed"] - part["predicted"])),
                                           rel=1e-14)
    # coverage where the model has an interval (pm2_5), none where it has not (no2)
    with_interval = add_uncertainty(frame.rename(columns={"predicted": "value"}), UNCERTAINTY)
    has = with_interval[LOWER].notna()
    inside = ((with_interval["observed"] >= with_interval[LOWER])
              & (with_interval["observed"] <= with_interval[UPPER]))[has]
    for (target, horizon), part in inside.groupby([with_interval.loc[has, "target"],
                                                   with_interval.loc[has, "horizon"]]):
        assert scores[target][str(horizon)]["coverage"] == float(part.mean())
    assert 0 < scores["pm2_5"]["1"]["coverage"] < 1
    assert "coverage" not in scores["no2"]["1"]


def test_a_model_without_holdout_rows_and_batches_out_of_order_are_refused():
    frame = predictions(n_locations=3, hours=48)
    summary = HoldoutSummary([*MODELS, ("o3", 1)])
    summary.add(frame[frame["location_id"] == "loc001"])
    with pytest.raises(ValueError, match="out of order"):
        summary.add(frame[frame["location_id"] == "loc000"])
    with pytest.raises(ValueError, match="no holdout rows for o3 h=1"):
        summary.scores()
