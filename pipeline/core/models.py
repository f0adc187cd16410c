"""Direct multi-horizon models: one scikit-learn Pipeline per target x horizon.

The split is by time, never shuffled: training rows are those whose label
(``t + h``) lies before the holdout start, so no label leaks into the holdout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline

from pipeline.config import ModelConfig
from pipeline.core.features import (
    anchor_column,
    label_column,
    persistence_column,
    seasonal_column,
)
from pipeline.core.scoring import score

CATEGORICAL = ("location_code",)


class LogResidualRegressor(RegressorMixin, BaseEstimator):
    """Fits ``log1p(y) - log1p(level now)`` and adds it back when predicting.

    Trees cannot extrapolate: forecasting the change relative to the latest known
    level (column ``anchor``, already log1p) keeps forecasts sensible when a
    location reaches levels training never saw, and puts clean and polluted
    places on one scale.
    """

    def __init__(self, estimator=None, anchor: str = "pm2_5_log"):
        self.estimator = estimator
        self.anchor = anchor

    def fit(self, X: pd.DataFrame, y):
        level = X[self.anchor].to_numpy(dtype=float)
        self.fallback_ = float(np.nanmedian(level))
        level = np.where(np.isnan(level), self.fallback_, level)
        self.estimator_ = clone(self.estimator).fit(X, np.log1p(np.asarray(y, float)) - level)
        return self

    def predict(self, X: pd.DataFrame):
        level = X[self.anchor].to_numpy(dtype=float)
        level = np.where(np.isnan(level), self.fallback_, level)
        return np.clip(np.expm1(level + self.estimator_.predict(X)), 0, None)


def build_estimator(config: ModelConfig, features: Sequence[str], target: str) -> Pipeline:
    select = ColumnTransformer(
        [("features", "passthrough", list(features))],
        remainder="drop",
        verbose_feature_names_out=False,
    ).set_output(transform="pandas")
    categorical = [c for c in features if c in CATEGORICAL]
    boosting = HistGradientBoostingRegressor(
        loss=config.loss,
        max_iter=config.max_iter,
        learning_rate=config.learning_rate,
        max_leaf_nodes=config.max_leaf_nodes,
        min_samples_leaf=config.min_samples_leaf,
        l2_regularization=config.l2_regularization,
        early_stopping=config.early_stopping,
        categorical_features=categorical or None,
        random_state=config.random_state,
    )
    model = LogResidualRegressor(boosting, anchor=anchor_column(target))
    return Pipeline([("select", select), ("model", model)])


@dataclass(frozen=True)
class Split:
    holdout_start: pd.Timestamp

    @classmethod
    def last_observed_days(cls, frame: pd.DataFrame, targets: Sequence[str], days: int) -> Split:
        """The holdout is the last ``days`` x 24 hours that have an observation.

        Counting observed hours, not calendar days, keeps a holdout when the newest
        data sits after a long gap (e.g. hourly ingestion resumed today after a
        backfill that ended months ago).
        """
        observed = frame.loc[frame[list(targets)].notna().any(axis=1), "time"]
        hours = np.sort(observed.unique())
        if len(hours) < 2:
            raise ValueError("fewer than two observed hours: ingest more data")
        wanted = days * 24
        start = hours[-wanted] if len(hours) > 2 * wanted else hours[len(hours) // 2]
        return cls(pd.Timestamp(start))

    def train_mask(self, frame: pd.DataFrame, horizon: int) -> pd.Series:
        return frame["time"] + pd.Timedelta(hours=horizon) < self.holdout_start

    def holdout_mask(self, frame: pd.DataFrame) -> pd.Series:
        return frame["time"] >= self.holdout_start


def training_rows(eligible: pd.Series, max_rows: int | None, seed: int) -> np.ndarray:
    """Positions of the rows a model is fitted on, in their original (time) order.

    All eligible rows, or a seeded uniform sample of ``max_rows`` of them: spread over
    the whole training period, so every season and location stays represented. Only
    rows before the holdout are eligible, so sampling never touches the time split.
    """
    positions = np.flatnonzero(eligible.to_numpy())
    if max_rows is None or len(positions) <= max_rows:
        return positions
    chosen = np.random.default_rng(seed).choice(positions, size=max_rows, replace=False)
    return np.sort(chosen)


def fit_models(
    frame: pd.DataFrame,
    features: Sequence[str],
    targets: Sequence[str],
    horizons: Sequence[int],
    config: ModelConfig,
    split: Split,
    progress=None,
) -> dict[tuple[str, int], Pipeline]:
    models = {}
    columns = [frame.columns.get_loc(f) for f in features]
    for target in targets:
        for horizon in horizons:
            label = label_column(target, horizon)
            eligible = split.train_mask(frame, horizon) & frame[label].notna()
            if (count := int(eligible.sum())) < 100:
                raise ValueError(
                    f"only {count} training rows for {target} h={horizon}: "
                    "ingest more history or lower evaluation.holdout_days"
                )
            rows = training_rows(eligible, config.max_train_rows, config.random_state)
            estimator = build_estimator(config, features, target)
            estimator.fit(frame.iloc[rows, columns], frame[label].iloc[rows])
            models[(target, horizon)] = estimator
            if progress is not None:
                progress(target, horizon)
    return models


def evaluation_rows(frame: pd.DataFrame, split: Split, target: str, horizon: int) -> pd.Series:
    """The holdout rows every method is scored on: label and both baselines known."""
    return (
        split.holdout_mask(frame)
        & frame[label_column(target, horizon)].notna()
        & frame[persistence_column(target)].notna()
        & frame[seasonal_column(target, horizon)].notna()
    )


def evaluate_models(
    models: dict[tuple[str, int], Pipeline],
    frame: pd.DataFrame,
    split: Split,
) -> tuple[dict[str, dict[str, dict[str, float]]], pd.DataFrame]:
    """Scores per target and horizon, and the holdout predictions (for plots)."""
    scores: dict[str, dict[str, dict[str, float]]] = {}
    predictions = []
    for (target, horizon), estimator in models.items():
        rows = evaluation_rows(frame, split, target, horizon)
        part = frame.loc[rows]
        if part.empty:
            raise ValueError(f"no holdout rows for {target} h={horizon}")
        predicted = estimator.predict(part)
        observed = part[label_column(target, horizon)].to_numpy()
        scores.setdefault(target, {})[str(horizon)] = score(
            target,
            observed,
            predicted,
            part[persistence_column(target)].to_numpy(),
            part[seasonal_column(target, horizon)].to_numpy(),
        )
        predictions.append(
            pd.DataFrame(
                {
                    "location_id": part["location_id"].to_numpy(),
                    "issue_time": part["time"].to_numpy(),
                    "target": target,
                    "horizon": horizon,
                    "observed": observed,
                    "predicted": predicted,
                    "persistence": part[persistence_column(target)].to_numpy(),
                }
            )
        )
    return scores, pd.concat(predictions, ignore_index=True)


def predict_latest(
    models: dict[tuple[str, int], Pipeline], latest: pd.DataFrame
) -> pd.DataFrame:
    """Forecasts from each location's latest feature row, for every target x horizon."""
    rows = []
    for (target, horizon), estimator in models.items():
        values = np.clip(estimator.predict(latest), 0, None)
        rows.append(
            pd.DataFrame(
                {
                    "location_id": latest["location_id"].to_numpy(),
                    "issue_time": latest["time"].to_numpy(),
                    "target_time": (latest["time"] + pd.Timedelta(hours=horizon)).to_numpy(),
                    "target": target,
                    "horizon": horizon,
                    "value": values,
                    "persistence": latest[target].to_numpy(),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)
