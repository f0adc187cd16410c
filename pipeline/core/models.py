"""Direct multi-horizon models: one scikit-learn Pipeline per target x horizon.

The split is by time, never shuffled: training rows are those whose label
(``t + h``) lies before the holdout start, so no label leaks into the holdout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline

from pipeline.config import ModelConfig
from pipeline.core.features import label_column, persistence_column, seasonal_column
from pipeline.core.scoring import score

CATEGORICAL = ("location_code",)


def build_estimator(config: ModelConfig, features: Sequence[str]) -> Pipeline:
    select = ColumnTransformer(
        [("features", "passthrough", list(features))],
        remainder="drop",
        verbose_feature_names_out=False,
    ).set_output(transform="pandas")
    categorical = [c for c in features if c in CATEGORICAL]
    model = HistGradientBoostingRegressor(
        loss="absolute_error",
        max_iter=config.max_iter,
        learning_rate=config.learning_rate,
        max_leaf_nodes=config.max_leaf_nodes,
        min_samples_leaf=config.min_samples_leaf,
        l2_regularization=config.l2_regularization,
        early_stopping=config.early_stopping,
        categorical_features=categorical or None,
        random_state=config.random_state,
    )
    return Pipeline([("select", select), ("model", model)])


@dataclass(frozen=True)
class Split:
    holdout_start: pd.Timestamp

    @classmethod
    def last_days(cls, times: pd.Series, days: int) -> Split:
        return cls(times.max().floor("D") - pd.Timedelta(days=days) + pd.Timedelta(days=1))

    def train_mask(self, frame: pd.DataFrame, horizon: int) -> pd.Series:
        return frame["time"] + pd.Timedelta(hours=horizon) < self.holdout_start

    def holdout_mask(self, frame: pd.DataFrame) -> pd.Series:
        return frame["time"] >= self.holdout_start


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
    for target in targets:
        for horizon in horizons:
            label = label_column(target, horizon)
            rows = split.train_mask(frame, horizon) & frame[label].notna()
            if rows.sum() < 100:
                raise ValueError(
                    f"only {int(rows.sum())} training rows for {target} h={horizon}: "
                    "ingest more history or lower evaluation.holdout_days"
                )
            estimator = build_estimator(config, features)
            estimator.fit(frame.loc[rows, list(features)], frame.loc[rows, label])
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
