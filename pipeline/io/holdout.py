"""The holdout scanned from the partitioned feature table (evaluate and promote), a batch of
whole locations at a time: only a :class:`HoldoutSummary` of the predictions is kept."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pandas as pd

from pipeline.core.evaluation import HoldoutSummary
from pipeline.core.features import label_column, persistence_column, seasonal_column
from pipeline.core.models import Split, evaluation_rows, holdout_predictions
from pipeline.io.feature_store import FeatureStore, location_batches, time_at_least


def holdout_sizes(store: FeatureStore, models: Mapping, split: Split) -> dict[tuple[str, int],
                                                                            int]:
    """Holdout rows per target x horizon (those :func:`holdout_predictions` scores), from
    the few columns that decide it."""
    columns = {"time"}
    for target, horizon in models:
        columns |= {label_column(target, horizon), persistence_column(target),
                    seasonal_column(target, horizon)}
    sizes = {(t, int(h)): 0 for t, h in models}
    for batch in store.batches(columns=sorted(columns),
                               filter=time_at_least(split.holdout_start)):
        for target, horizon in sizes:
            sizes[(target, horizon)] += int(evaluation_rows(batch, split, target, horizon).sum())
    return sizes


def holdout_batches(store: FeatureStore, models: Mapping, split: Split
                    ) -> Iterator[pd.DataFrame]:
    """The models' holdout predictions, ``store.batch_locations`` whole locations at a time
    in location order (each batch read, predicted, then dropped)."""
    for locations in location_batches(store.locations(), store.batch_locations):
        frame = store.read(filter=time_at_least(split.holdout_start), locations=locations)
        if len(frame):
            yield holdout_predictions(models, frame, split)


def summarise_holdout(store: FeatureStore, models: Mapping, split: Split,
                      uncertainty: Mapping | None = None, plots: bool = False
                      ) -> HoldoutSummary:
    """Scores (and with ``plots`` the plot data) of ``models`` on the holdout: memory grows
    with the batch of locations, not with their number."""
    sizes = holdout_sizes(store, models, split) if plots else None
    summary = HoldoutSummary(list(models), uncertainty, sizes)
    for predictions in holdout_batches(store, models, split):
        summary.add(predictions)
    return summary
