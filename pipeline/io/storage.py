"""Atomic, idempotent file storage for raw partitions and stage outputs.

Every write goes to a temporary file in the target directory, is fsynced and
then renamed over the target, so a crash leaves either the old or the new file,
never a torn one.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import COLUMNS, KEYS, VALUE_COLUMNS, conform, empty_frame


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Deterministic Parquet bytes: same frame, same library versions, same bytes."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, parquet_bytes(frame))


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        if default is not None:
            return default
        raise


# ---------------------------------------------------------------- raw partitions


def partition_path(raw_dir: Path, source: str, location_id: str, month: str) -> Path:
    return Path(raw_dir) / f"source={source}" / f"location={location_id}" / f"month={month}.parquet"


@dataclass
class WriteReport:
    """What a raw write did, per partition file."""

    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    rows_new: int = 0
    rows_updated: int = 0

    @property
    def files(self) -> list[Path]:
        return self.written + self.unchanged


def _merge(existing: pd.DataFrame, incoming: pd.DataFrame) -> pd.DataFrame:
    """Incoming values win where they are present; a NaN never erases a stored value."""
    if existing.empty:
        merged = incoming
    else:
        old = existing.set_index(list(KEYS))
        new = incoming.set_index(list(KEYS))
        merged = new.combine_first(old).reset_index()
    merged = merged.drop_duplicates(subset=list(KEYS), keep="last")
    return conform(merged[list(COLUMNS)]).sort_values(list(KEYS)).reset_index(drop=True)


@contextlib.contextmanager
def raw_lock(raw_dir: Path):
    """Serialise read-merge-write of raw partitions across processes (two ingest runs at once).

    The lock file sits beside data/, not in it, so it never changes the data hash.
    """
    lock_path = Path(raw_dir).parent.parent / ".raw.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_raw(raw_dir: Path, source: str, frame: pd.DataFrame) -> WriteReport:
    """Merge canonical, validated rows into monthly partitions; idempotent.

    Writing the same rows twice leaves byte-identical files; an empty frame
    writes nothing.
    """
    if frame.empty:
        return WriteReport()
    with raw_lock(raw_dir):
        return _write_raw_locked(raw_dir, source, frame)


def _write_raw_locked(raw_dir: Path, source: str, frame: pd.DataFrame) -> WriteReport:
    report = WriteReport()
    frame = conform(frame).drop_duplicates(subset=list(KEYS), keep="last")
    months = frame["time"].dt.strftime("%Y-%m")
    for (location_id, month), part in frame.groupby([frame["location_id"], months], sort=True):
        path = partition_path(raw_dir, source, str(location_id), str(month))
        existing = read_partition(path) if path.exists() else empty_frame()
        merged = _merge(existing, part)
        known = set(zip(existing["location_id"], existing["time"], strict=True))
        incoming_keys = list(zip(part["location_id"], part["time"], strict=True))
        new_keys = sum(1 for k in incoming_keys if k not in known)
        payload = parquet_bytes(merged)
        if path.exists() and path.read_bytes() == payload:
            report.unchanged.append(path)
            continue
        atomic_write_bytes(path, payload)
        report.written.append(path)
        report.rows_new += new_keys
        report.rows_updated += len(incoming_keys) - new_keys
    return report


def read_partition(path: Path) -> pd.DataFrame:
    return conform(pd.read_parquet(path))


def raw_files(raw_dir: Path, source: str, locations: Iterable[str] | None = None) -> list[Path]:
    base = Path(raw_dir) / f"source={source}"
    if not base.exists():
        return []
    wanted = None if locations is None else {f"location={loc}" for loc in locations}
    files = []
    for loc_dir in sorted(base.iterdir()):
        if loc_dir.is_dir() and (wanted is None or loc_dir.name in wanted):
            files.extend(sorted(loc_dir.glob("month=*.parquet")))
    return files


def newest_observation(raw_dir: Path, source: str, location_id: str) -> pd.Timestamp | None:
    """Newest stored hour for a location, read from its latest partition only."""
    files = raw_files(raw_dir, source, [location_id])
    if not files:
        return None
    times = pq.read_table(files[-1], columns=["time"]).column("time").to_pandas()
    return None if times.empty else pd.Timestamp(times.max()).tz_convert("UTC")


def read_raw(
    raw_dir: Path,
    source: str,
    locations: Iterable[str] | None = None,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """All stored rows of a source, optionally for some locations and a [start, end) window."""
    files = raw_files(raw_dir, source, locations)
    if start is not None or end is not None:
        lo = None if start is None else pd.Timestamp(start).strftime("%Y-%m")
        hi = None if end is None else pd.Timestamp(end).strftime("%Y-%m")
        files = [
            f
            for f in files
            if (lo is None or f.stem[len("month=") :] >= lo)
            and (hi is None or f.stem[len("month=") :] <= hi)
        ]
    if not files:
        return empty_frame()
    table = pa.concat_tables([pq.read_table(f) for f in files])
    frame = conform(table.to_pandas())
    if start is not None:
        frame = frame[frame["time"] >= pd.Timestamp(start)]
    if end is not None:
        frame = frame[frame["time"] < pd.Timestamp(end)]
    return frame.sort_values(list(KEYS)).reset_index(drop=True)


def append_quarantine(
    quarantine_dir: Path, source: str, rows: pd.DataFrame, run_id: str
) -> Path | None:
    """Keep refused rows with their reasons, one file per run (never overwritten by another run)."""
    if rows.empty:
        return None
    path = Path(quarantine_dir) / f"source={source}" / f"{run_id}.parquet"
    atomic_write_parquet(path, rows.reset_index(drop=True))
    return path


__all__ = [
    "VALUE_COLUMNS",
    "WriteReport",
    "append_quarantine",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_text",
    "parquet_bytes",
    "partition_path",
    "raw_files",
    "read_json",
    "read_partition",
    "read_raw",
    "write_raw",
]
