"""The feature table, partitioned by location: ``build/features/location=L/``.

Each location's directory holds

- ``part.parquet``: its feature rows (keys, model inputs, labels and baselines) as built,
  float64 (float32 was measured and changes forecasts: ``docs/benchmarks.md``);
- ``quarantine.parquet``: the raw rows validation refused, with the reason;
- ``stats.json``: what preprocessing saw (rows in, valid, quarantined, span).

A location's files are written by whichever process preprocesses it (one
``python -m pipeline preprocess``, or one mapped Airflow task per batch of locations), each
atomically; nothing in it depends on another location. Readers never load the whole table:
they stream record batches of the columns and rows they need through a ``pyarrow.dataset``
scan (:meth:`FeatureStore.batches`), so their memory is bounded by the batch and what they
keep, not by the number of locations.
"""

from __future__ import annotations

import json
import logging
import shutil
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.core.counts import (
    add_hour_counts,
    add_location_extents,
    hour_counts,
    location_extents,
)
from pipeline.core.features import hour_numbers
from pipeline.errors import MissingInputError, PipelineError
from pipeline.io.storage import atomic_write_json, atomic_write_parquet
from pipeline.schema import KEYS

log = logging.getLogger(__name__)

PART = "part.parquet"
QUARANTINE = "quarantine.parquet"
STATS = "stats.json"
SCAN_BATCH_ROWS = 65_536  # rows per record batch a scan hands over


class DamagedFeaturesError(PipelineError):
    """A feature partition cannot be read; the message names it and how to rebuild it."""


def sample_uniform(location_ids: np.ndarray, hours: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per (location, hour), a pure function of them and ``seed``.

    Sampling rows by comparing it with a rate keeps the same rows whatever the order, the
    batching or the partitioning of the table (splitmix64 of the keys).
    """
    index, uniques = pd.factorize(np.asarray(location_ids, dtype=object))
    crc = np.array([zlib.crc32(str(loc).encode()) for loc in uniques], dtype=np.uint64)
    codes = crc[index] if len(uniques) else np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (codes << np.uint64(32)) ^ np.asarray(hours, dtype=np.int64).astype(np.uint64)
        x ^= np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


class FeatureStore:
    """``build/features/``: one directory per location (see the module docstring)."""

    def __init__(self, root: Path, batch_locations: int = 25):
        self.root = Path(root)
        self.batch_locations = max(1, int(batch_locations))  # locations a scan reads at once

    # ---------------------------------------------------------------- layout and writes

    def location_dir(self, location_id: str) -> Path:
        return self.root / f"location={location_id}"

    def part(self, location_id: str) -> Path:
        return self.location_dir(location_id) / PART

    def locations(self) -> list[str]:
        """Locations with a feature partition, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name.removeprefix("location=")
                      for p in self.root.glob(f"location=*/{PART}"))

    def write(self, location_id: str, features: pd.DataFrame, quarantine: pd.DataFrame,
              stats: dict) -> None:
        """One location's partition, its quarantined rows and its stats (each atomic).

        The stats are written last: a location whose stats exist has its other files.
        """
        directory = self.location_dir(location_id)
        atomic_write_parquet(directory / PART, features)
        atomic_write_parquet(directory / QUARANTINE, quarantine.reset_index(drop=True))
        atomic_write_json(directory / STATS, stats)

    def remove_except(self, keep: Iterable[str]) -> list[str]:
        """Delete the partitions of locations not in ``keep`` (no longer in params.yaml)."""
        keep = set(keep)
        removed = []
        if self.root.is_dir():
            for directory in sorted(self.root.glob("location=*")):
                location = directory.name.removeprefix("location=")
                if location not in keep:
                    shutil.rmtree(directory)
                    removed.append(location)
        return removed

    def stats(self, location_id: str) -> dict | None:
        path = self.location_dir(location_id) / STATS
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DamagedFeaturesError(f"{path} cannot be read ({exc}): run `python -m "
                                       f"pipeline preprocess` again") from None

    def quarantine(self, location_id: str) -> pd.DataFrame:
        return pd.read_parquet(self.location_dir(location_id) / QUARANTINE)

    # ---------------------------------------------------------------- reads

    def _files(self, locations: Iterable[str] | None = None) -> list[str]:
        wanted = self.locations() if locations is None else sorted(locations)
        files = [self.part(loc) for loc in wanted]
        files = [f for f in files if f.is_file()]
        if not files:
            raise MissingInputError(f"no feature partitions in {self.root}: run `python -m "
                                    "pipeline preprocess` first")
        return [str(f) for f in files]

    def columns(self) -> list[str]:
        """The table's columns (those of the first partition; all have the same)."""
        return list(pq.read_schema(self._files()[0]).names)

    def batches(self, columns: Sequence[str] | None = None, filter: ds.Expression | None = None,
                locations: Iterable[str] | None = None,
                batch_rows: int = SCAN_BATCH_ROWS) -> Iterator[pd.DataFrame]:
        """The table's rows in bounded record batches, never all at once:
        ``batch_locations`` locations at a time, at most ``batch_rows`` rows per batch.

        ``filter`` is a ``pyarrow.dataset`` expression (:func:`time_at_least`,
        :func:`time_before`), pushed down to the Parquet reader.
        """
        try:
            for files in location_batches(self._files(locations), self.batch_locations):
                dataset = ds.dataset(files, format="parquet")
                scanner = dataset.to_batches(
                    columns=None if columns is None else list(columns), filter=filter,
                    batch_size=batch_rows, batch_readahead=1, fragment_readahead=1,
                    use_threads=True)
                for batch in scanner:
                    if batch.num_rows:
                        yield batch.to_pandas()
        except (OSError, pa.ArrowException) as exc:
            raise DamagedFeaturesError(
                f"feature partitions in {self.root} cannot be read ({str(exc)[:300]}): run "
                "`python -m pipeline preprocess` again") from None

    def read(self, columns: Sequence[str] | None = None, filter: ds.Expression | None = None,
             locations: Iterable[str] | None = None) -> pd.DataFrame:
        """The rows asked for as one frame: for a bounded selection (a few locations, a
        window), tests and small projects; steps scan with :meth:`batches`."""
        parts = list(self.batches(columns, filter, locations))
        if not parts:
            names = columns or self.columns()
            return pd.DataFrame({c: pd.Series(dtype="float64") for c in names})
        return pd.concat(parts, ignore_index=True)

    def hour_counts(self, targets: Sequence[str]) -> pd.DataFrame:
        """:func:`pipeline.core.models.hour_counts` of the whole table, batch by batch."""
        parts = []
        for batch in self.batches(columns=["time", *targets]):
            parts.append(hour_counts(batch, targets))
            if len(parts) > 32:
                parts = [add_hour_counts(parts)]
        return add_hour_counts(parts)

    def location_extents(self, targets: Sequence[str], holdout_start: pd.Timestamp,
                         label_cutoff: pd.Timestamp) -> pd.DataFrame:
        """:func:`pipeline.core.counts.location_extents` of the whole table, batch by batch."""
        parts = [location_extents(batch, targets, holdout_start, label_cutoff)
                 for batch in self.batches(columns=["location_id", "time", *targets])]
        return add_location_extents(parts)

    def sample(self, rate: float, seed: int, filter: ds.Expression | None = None,
               columns: Sequence[str] | None = None) -> pd.DataFrame:
        """A seeded uniform sample of the rows matching ``filter``: each kept with
        probability ``rate`` (:func:`sample_uniform`), in (location, time) order."""
        kept = []
        for batch in self.batches(columns, filter):
            if rate < 1:
                u = sample_uniform(batch["location_id"].to_numpy(),
                                   hour_numbers(batch["time"]), seed)
                batch = batch[u < rate]
            kept.append(batch)
        if not kept:
            raise MissingInputError(f"no feature rows in {self.root} match {filter}")
        frame = pd.concat(kept, ignore_index=True)
        return frame.sort_values(list(KEYS), kind="stable").reset_index(drop=True)


def _timestamp(value: pd.Timestamp) -> pa.Scalar:
    return pa.scalar(pd.Timestamp(value).tz_convert("UTC").to_pydatetime(),
                     type=pa.timestamp("us", tz="UTC"))


def time_at_least(value: pd.Timestamp) -> ds.Expression:
    return ds.field("time") >= _timestamp(value)


def time_before(value: pd.Timestamp) -> ds.Expression:
    return ds.field("time") < _timestamp(value)


def location_batches(location_ids: Sequence[str], size: int) -> list[list[str]]:
    """Location ids in batches of ``size`` (the last one shorter), in the order given."""
    ids = list(location_ids)
    return [ids[i:i + size] for i in range(0, len(ids), max(1, int(size)))]
