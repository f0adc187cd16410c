"""Holdout forecasts scanned from the partitioned feature table (evaluate and promote)."""

from __future__ import annotations

import pandas as pd

from pipeline.core.models import Split, holdout_predictions
from pipeline.io.feature_store import FeatureStore, time_at_least


def holdout_predictions_of(store: FeatureStore, models: dict, split: Split) -> pd.DataFrame:
    """The models' forecasts on the holdout, scanned from the feature partitions in bounded
    batches (each batch is predicted, then dropped; only the predictions are kept)."""
    parts = [holdout_predictions(models, batch, split)
             for batch in store.batches(filter=time_at_least(split.holdout_start))]
    parts = [p for p in parts if len(p)]
    if not parts:
        return holdout_predictions(models, store.read(filter=time_at_least(
            split.holdout_start)).iloc[0:0], split)
    order = {key: i for i, key in enumerate(models)}
    predictions = pd.concat(parts, ignore_index=True)
    rank = [order[(t, h)] for t, h in zip(predictions["target"], predictions["horizon"],
                                          strict=True)]
    return (predictions.assign(_model=rank)
            .sort_values(["_model", "location_id", "issue_time"], kind="stable")
            .drop(columns="_model").reset_index(drop=True))
