"""What evaluate reports of a model on its holdout, gathered a batch of locations at a time.

A holdout of 500 locations holds millions of predictions; :class:`HoldoutSummary` keeps only
what the reports need (exact sums and counts per target x horizon and per hour, and the few
hundred rows of the predicted-vs-observed plot), so memory does not grow with the number of
locations, and the reports are those of every prediction at once, to the last bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.core.intervals import LOWER, UPPER, add_uncertainty
from pipeline.core.keys import ModelKey, nest
from pipeline.core.scoring import ExactSum, ScoreSums

PLOT_POINTS = 500  # the predicted-vs-observed plot keeps about this many rows per model
ORDER = ["location_id", "issue_time"]  # the order of a model's predictions in the plot


class MeanSums:
    """Means of columns that skip NaN (as pandas' ``groupby().mean()``), exact."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.sums = {c: ExactSum() for c in columns}
        self.counts = dict.fromkeys(columns, 0)

    def add(self, frame: pd.DataFrame) -> None:
        for column, total in self.sums.items():
            values = frame[column].to_numpy(np.float64)
            known = values[~np.isnan(values)]
            total.add(known)
            self.counts[column] += len(known)

    def means(self) -> dict[str, float]:
        return {c: s.mean(self.counts[c]) for c, s in self.sums.items()}


class HoldoutSummary:
    """Scores, interval coverage and plot data of the holdout predictions
    (:func:`pipeline.core.models.holdout_predictions`), added a batch at a time.

    ``sizes`` (rows per target x horizon, known before the predictions: a counting pass)
    sets the plot's sampling step; without it there is no predicted-vs-observed sample.
    Batches must hold whole locations and come in ascending location order, as the plot
    samples every step-th prediction of each model in (location, issue time) order.
    """

    def __init__(self, models: Sequence[tuple[str, int]], uncertainty: Mapping | None = None,
                 sizes: Mapping[tuple[str, int], int] | None = None) -> None:
        self.models = [ModelKey.of(t, h) for t, h in models]
        self.uncertainty = uncertainty or None
        self.scores_of = {key: ScoreSums(key[0]) for key in self.models}
        self.inside = dict.fromkeys(self.models, 0)
        self.with_interval = dict.fromkeys(self.models, 0)
        self.steps = (None if sizes is None else
                      {key: max(1, int(sizes.get(key, 0)) // PLOT_POINTS) for key in self.models})
        self.seen = dict.fromkeys(self.models, 0)  # predictions of each model so far
        self.last_location: str | None = None
        self.samples: list[pd.DataFrame] = []
        self.by_horizon: dict[tuple[str, int], MeanSums] = {}
        self.by_hour: dict[tuple[str, int], MeanSums] = {}
        self.rows_in = 0  # distinct (location, issue time) scored
        self.rows_out = 0  # predictions

    def add(self, predictions: pd.DataFrame) -> None:
        if predictions.empty:
            return
        locations = predictions["location_id"]
        if self.last_location is not None and locations.min() <= self.last_location:
            raise ValueError(f"holdout batches out of order: {locations.min()!r} after "
                             f"{self.last_location!r}")
        self.last_location = locations.max()
        self.rows_in += int(len(predictions[ORDER].drop_duplicates()))
        self.rows_out += len(predictions)
        errors = predictions.assign(
            model=np.abs(predictions["predicted"] - predictions["observed"]),
            persistence=np.abs(predictions["persistence"] - predictions["observed"]),
            hour=(predictions["issue_time"]
                  + pd.to_timedelta(predictions["horizon"], unit="h")).dt.hour)
        for (target, horizon), part in predictions.groupby(["target", "horizon"], sort=False):
            key = ModelKey.of(target, horizon)
            if key in self.scores_of:
                self.scores_of[key].add(part["observed"], part["predicted"],
                                        part["persistence"], part["seasonal"])
            self._sample(key, part)
        for groups, keys in ((self.by_horizon, ["target", "horizon"]),
                             (self.by_hour, ["target", "hour"])):
            for (target, value), part in errors.groupby(keys, sort=False):
                groups.setdefault((target, int(value)),
                                  MeanSums(["model", "persistence"])).add(part)
        if self.uncertainty:
            self._add_coverage(predictions)

    def _sample(self, key: tuple[str, int], part: pd.DataFrame) -> None:
        if self.steps is None:
            return
        step = self.steps.get(key, 1)
        ordered = part.sort_values(ORDER)
        position = self.seen.get(key, 0) + np.arange(len(ordered))
        self.seen[key] = self.seen.get(key, 0) + len(ordered)
        self.samples.append(ordered[position % step == 0])

    def _add_coverage(self, predictions: pd.DataFrame) -> None:
        with_interval = add_uncertainty(predictions.rename(columns={"predicted": "value"}),
                                        self.uncertainty)
        has = with_interval[LOWER].notna()
        inside = ((with_interval["observed"] >= with_interval[LOWER])
                  & (with_interval["observed"] <= with_interval[UPPER]))[has]
        known = with_interval[has]
        for (target, horizon), part in inside.groupby([known["target"], known["horizon"]]):
            key = ModelKey.of(target, horizon)
            self.inside[key] = self.inside.get(key, 0) + int(part.sum())
            self.with_interval[key] = self.with_interval.get(key, 0) + len(part)

    def scores(self) -> dict[str, dict[str, dict[str, float]]]:
        """Scores per model, serialised by key (:func:`nest`: ``{target: {"6": {...}}}``),
        with ``coverage`` where the model has an interval; a model without holdout rows is
        an error."""
        out: dict[ModelKey, dict[str, float]] = {}
        for key in self.models:
            sums = self.scores_of[key]
            if sums.n == 0:
                raise ValueError(f"no holdout rows for {key}")
            out[key] = sums.result()
            if self.with_interval.get(key):
                out[key]["coverage"] = self.inside[key] / self.with_interval[key]
        return nest(out)

    def plots(self) -> dict[str, pd.DataFrame]:
        """DVC plot data: predicted vs observed (a sample), error by horizon, by hour of day."""
        sample = (pd.concat(self.samples, ignore_index=True) if self.samples else
                  pd.DataFrame(columns=["target", "horizon", *ORDER, "observed", "predicted"]))
        sample = sample.sort_values(["target", "horizon", *ORDER])
        return {
            "predicted_vs_observed": sample[["target", "horizon", "location_id", "observed",
                                             "predicted"]].round(3),
            "error_by_horizon": _mean_table(self.by_horizon, "horizon"),
            "error_by_hour": _mean_table(self.by_hour, "hour"),
        }


def _mean_table(groups: Mapping[tuple[str, int], MeanSums], name: str) -> pd.DataFrame:
    rows = [{"target": target, name: value, **sums.means()}
            for (target, value), sums in sorted(groups.items())]
    return pd.DataFrame(rows, columns=["target", name, "model", "persistence"]).round(4)
