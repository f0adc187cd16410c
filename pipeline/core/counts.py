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


EXTENTS = ("location_id", "first_hour", "train_last_hour", "holdout_first_hour",
           "holdout_last_hour", "holdout_rows")


def location_extents(frame: pd.DataFrame, targets: Sequence[str], holdout_start: pd.Timestamp,
                     label_cutoff: pd.Timestamp) -> pd.DataFrame:
    """Per location (``EXTENTS``): its first hour with a target observed, the last such hour
    before ``label_cutoff`` (the newest a training label can be), and its holdout: first and
    last observed hour from ``holdout_start`` and how many. Parts add up
    (:func:`add_location_extents`), so a table read in batches gives the whole table's."""
    observed = frame.loc[frame[list(targets)].notna().any(axis=1), ["location_id", "time"]]
    groups = observed.groupby("location_id", sort=True)["time"]
    train = observed[observed["time"] < label_cutoff].groupby("location_id")["time"]
    holdout = observed[observed["time"] >= holdout_start].groupby("location_id")["time"]
    out = pd.DataFrame({"first_hour": groups.min()})
    out["train_last_hour"] = train.max()
    out["holdout_first_hour"] = holdout.min()
    out["holdout_last_hour"] = holdout.max()
    out["holdout_rows"] = holdout.size()
    out["holdout_rows"] = out["holdout_rows"].fillna(0).astype("int64")
    return out.rename_axis("location_id").reset_index()[list(EXTENTS)]


def add_location_extents(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The extents of the union of the tables ``parts`` were computed from."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=list(EXTENTS))
    return pd.concat(parts).groupby("location_id", sort=True).agg(
        first_hour=("first_hour", "min"), train_last_hour=("train_last_hour", "max"),
        holdout_first_hour=("holdout_first_hour", "min"),
        holdout_last_hour=("holdout_last_hour", "max"),
        holdout_rows=("holdout_rows", "sum")).reset_index()[list(EXTENTS)]


def extents_json(extents: pd.DataFrame) -> dict[str, dict]:
    """Location -> its extents as plain JSON values (ISO hours, None where it has none)."""
    out = {}
    for row in extents.itertuples(index=False):
        out[str(row.location_id)] = {
            key: (None if pd.isna(value) else
                  pd.Timestamp(value).isoformat() if key.endswith("_hour") else int(value))
            for key, value in zip(EXTENTS[1:], row[1:], strict=True)}
    return out
