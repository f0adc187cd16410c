"""Per-hour row counts of a feature table: all a time split needs, whatever its size. Pure."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

HOUR_COUNTS = ("time", "rows", "observed")


def hour_counts(frame: pd.DataFrame, targets: Sequence[str]) -> pd.DataFrame:
    """Per UTC hour: feature rows and rows with a target observed (``HOUR_COUNTS``, sorted).

    All a split needs to know about a feature table; its length is the number of hours,
    whatever the number of locations, and the counts of two tables' parts add up
    (:func:`add_hour_counts`), so a split of a table read in batches equals the split of
    the whole table.
    """
    observed = frame[list(targets)].notna().any(axis=1).to_numpy()
    counts = pd.DataFrame({"time": frame["time"].to_numpy(), "rows": 1,
                           "observed": observed.astype(np.int64)})
    return counts.groupby("time", sort=True, as_index=False).sum()


def add_hour_counts(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The counts of the union of the tables ``parts`` were counted from."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame({"time": pd.Series(dtype="datetime64[us, UTC]"),
                             "rows": pd.Series(dtype="int64"),
                             "observed": pd.Series(dtype="int64")})
    return pd.concat(parts).groupby("time", sort=True, as_index=False).sum()
