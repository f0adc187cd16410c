"""Atomic, idempotent file storage for raw partitions, stage outputs and state files.

Every write goes to a temporary file in the target directory, is fsynced and
then renamed over the target, so a crash leaves either the old or the new file,
never a torn one; the temporary file is removed on every failure (a full disk
included). Outputs are readable by others (0644 under the usual umask), secrets
are written 0600. Raw partitions are written under the raw-data lock
(:func:`raw_write_lock`) and read under its shared side (:func:`raw_read_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.schema import (
    COLUMNS,
    FORECAST_COLUMNS,
    FORECAST_KEYS,
    KEYS,
    VALUE_COLUMNS,
    conform,
    conform_forecasts,
    covariate_columns,
    empty_forecasts,
    empty_frame,
)

log = logging.getLogger(__name__)

SECRET_MODE = 0o600


class StateFileError(PipelineError):
    """A state or report file is unreadable; the message names it and says how to recover."""


class DamagedPartitionError(PipelineError):
    """A raw partition cannot be read; the message names it and the window to re-ingest."""


def _umask() -> int:
    """The process umask, read without changing it (Linux), else by the set-and-restore dance."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_mode() -> int:
    """What ``open()`` would give a new file: 0644 under the usual umask 022."""
    return 0o666 & ~_umask()


def ensure_dir(path: Path) -> Path:
    """``mkdir -p`` whose new directories are 0755 under the usual umask (not mkdtemp's 0700)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def atomic_write_bytes(path: Path, payload: bytes, mode: int | None = None) -> None:
    """Write ``payload`` to ``path`` atomically; ``mode`` defaults to :func:`output_mode`."""
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, output_mode() if mode is None else mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise_naming(exc, path)
        raise


def raise_naming(exc: BaseException, path: Path) -> None:
    """Re-raise an ``OSError`` that does not say which file (a full disk) with ``path``."""
    if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: Path, obj: Any, mode: int | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", mode)


def read_state_json(path: Path, what: str, recovery: str) -> Any:
    """The one way state and report files are read: errors name the file and the way out.

    ``what`` says what the file is ("champion pointer"), ``recovery`` what to do about a
    damaged one ("run `python -m pipeline rollback --to VERSION`").
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StateFileError(f"{what} {path} does not exist: {recovery}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StateFileError(f"{what} {path} cannot be read ({exc}): {recovery}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StateFileError(f"{what} {path} is not valid JSON ({exc}): {recovery}") from None


def require_keys(obj: Any, keys: Iterable[str], path: Path, what: str, recovery: str) -> dict:
    """``obj`` as a mapping holding ``keys``; else a :class:`StateFileError` naming the file."""
    if not isinstance(obj, dict):
        raise StateFileError(f"{what} {path} holds {type(obj).__name__}, not an object: "
                             f"{recovery}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise StateFileError(f"{what} {path} lacks {missing}: {recovery}")
    return obj


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False, timeout_s: float | None = None,
              what: str = "lock"):
    """An advisory ``flock`` on ``path`` (created if needed), waited for at most ``timeout_s``."""
    path = Path(path)
    ensure_dir(path.parent)
    with open(path, "a") as handle:
        op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if timeout_s is None:
            fcntl.flock(handle, op)
        else:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(handle, op | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise PipelineError(
                            f"{what} {path} still held by another process after {timeout_s:g} s"
                        ) from None
                    time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Deterministic Parquet bytes: same frame, same library versions, same bytes."""
    # one thread: the frames are small, and a thread pool per call cost more than the work
    table = pa.Table.from_pandas(frame, preserve_index=False, nthreads=1)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, parquet_bytes(frame))


def read_locations(path: Path, locations: Iterable[str], others: bool = False,
                   batch_rows: int = 65_536) -> pd.DataFrame:
    """The rows of a Parquet file whose ``location_id`` is in ``locations`` (with ``others``:
    is not), a record batch at a time, reading only the row groups that hold such rows (from
    their statistics, or with ``others`` from their ``location_id`` column).

    Memory is bounded by the row groups read: a file written by :class:`ParquetParts` a batch
    of locations at a time is read a part at a time; a file written as one row group is
    decoded whole (the Parquet reader decodes a row group's column chunks at once).
    """
    wanted = sorted(set(locations))
    value_set = pa.array(wanted, type=pa.string())
    handle = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
    column = handle.schema_arrow.get_field_index("location_id")
    groups = []
    for index in range(handle.num_row_groups):
        if others:
            ids = handle.read_row_group(index, columns=["location_id"]).column(0)
            if pc.all(pc.is_in(pc.unique(ids).cast(pa.string()), value_set=value_set)).as_py():
                continue
        else:
            stats = handle.metadata.row_group(index).column(column).statistics
            if stats is not None and stats.has_min_max and not any(
                    stats.min <= loc <= stats.max for loc in wanted):
                continue
        groups.append(index)
    parts = []
    for batch in handle.iter_batches(batch_size=batch_rows, row_groups=groups):
        keep = pc.is_in(batch.column("location_id").cast(pa.string()), value_set=value_set)
        parts.append(batch.filter(pc.invert(keep) if others else keep))
    return pa.Table.from_batches(parts, schema=handle.schema_arrow).to_pandas()


class ParquetParts:
    """One Parquet file written a frame at a time (each a row group or more), atomically:
    the file appears complete at the end of the ``with`` block, or not at all (an error
    leaves the earlier file as it was). Memory holds one part, not the file."""

    ROW_GROUP_ROWS = 65_536  # small row groups: a filtered read decodes little

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.writer: pq.ParquetWriter | None = None
        self.tmp: str | None = None
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        table = pa.Table.from_pandas(frame, preserve_index=False, nthreads=1)
        if self.writer is None:
            ensure_dir(self.path.parent)
            fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                            dir=self.path.parent)
            os.fchmod(fd, output_mode())
            os.close(fd)
            self.writer = pq.ParquetWriter(self.tmp, table.schema, compression="zstd")
        else:
            table = table.cast(self.writer.schema)
        self.writer.write_table(table, row_group_size=self.ROW_GROUP_ROWS)
        self.rows += len(frame)

    def __enter__(self) -> ParquetParts:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if self.writer is None:
            return
        self.writer.close()
        if kind is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)
            return
        try:
            with open(self.tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(self.tmp, self.path)
        except BaseException as error:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)
            raise_naming(error, self.path)
            raise


# ---------------------------------------------------------------- raw partitions


def month_keys(times: pd.Series) -> pd.Series:
    """``YYYY-MM`` of each UTC time, formatted once per distinct month (strftime on every row
    cost more than the merge it keys)."""
    utc_times = times.dt.tz_convert("UTC")
    number = utc_times.dt.year * 100 + utc_times.dt.month
    names = {n: f"{n // 100:04d}-{n % 100:02d}" for n in number.unique()}
    return number.map(names)


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

    def merge(self, other: WriteReport) -> None:
        # sets, not list scans: a long ingest merges thousands of partition paths
        written = set(self.written)
        self.written.extend(p for p in other.written if p not in written)
        written.update(other.written)
        unchanged = set(self.unchanged)
        self.unchanged.extend(p for p in other.unchanged
                              if p not in unchanged and p not in written)
        self.rows_new += other.rows_new
        self.rows_updated += other.rows_updated


def _merge(existing: pd.DataFrame | None, incoming: pd.DataFrame) -> pd.DataFrame:
    """Incoming values win where they are present; a NaN never erases a stored value.

    ``existing`` None: a new partition, ``incoming`` already conformed and free of duplicate
    keys (as :func:`write_raw` hands it over): only its order changes.
    """
    if existing is None:
        return incoming.sort_values(list(KEYS)).reset_index(drop=True)
    if existing.empty:
        merged = incoming
    else:
        old = existing.set_index(list(KEYS))
        new = incoming.set_index(list(KEYS))
        merged = new.combine_first(old).reset_index()
    merged = merged.drop_duplicates(subset=list(KEYS), keep="last")
    columns = list(COLUMNS) + covariate_columns(merged.columns)
    return conform(merged[columns]).sort_values(list(KEYS)).reset_index(drop=True)


RAW_LOCK_TIMEOUT_S = 30 * 60.0  # a DVC stage (train) may read data/raw for minutes


def raw_lock_path(raw_dir: Path) -> Path:
    """Beside data/, not in it, so the lock never changes the data hash."""
    return Path(raw_dir).resolve().parent.parent / ".raw.lock"


@contextlib.contextmanager
def _dvc_write_lock(raw_dir: Path, timeout_s: float):
    with _dvc_rwlock(raw_dir, timeout_s, write=True):
        yield


@contextlib.contextmanager
def dvc_read_lock(raw_dir: Path, timeout_s: float = RAW_LOCK_TIMEOUT_S):
    """DVC's read/write lock on ``data/raw`` taken as a reader, as a DVC stage holds it.

    Held around work done outside ``dvc repro`` that ``dvc commit`` then records (a mapped
    preprocess: the check that every partition is of the current raw data, and the commit):
    raw writes wait, other readers (DVC commands included) do not. No-op outside a DVC
    repository.
    """
    with _dvc_rwlock(raw_dir, timeout_s, write=False):
        yield


# DVC's read/write lock is internal (``dvc.rwlock.rwlock``, what a stage takes on its
# dependencies; no public API takes it). It is called by keyword, and only when the installed
# DVC has the parameters and version it was written and tested against:
# tests/test_private_apis.py fails on any other, a run carries on without it (saying so).
DVC_RWLOCK_PARAMETERS = ("tmp_dir", "fs", "cmd", "read", "write", "hardlink")
DVC_RWLOCK_MAJOR = "3"


@functools.cache
def dvc_rwlock_api() -> tuple[Any, type[Exception], Any] | None:
    """(rwlock, LockError, localfs) of the installed DVC, or None when its lock is not the one
    this code was written against (another major version, other parameters, moved names)."""
    import inspect

    try:
        import dvc
        from dvc.fs import localfs
        from dvc.lock import LockError
        from dvc.rwlock import rwlock

        version = dvc.__version__
        parameters = tuple(inspect.signature(rwlock).parameters)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        log.warning("DVC's lock unavailable (%s): raw data writes are not held against DVC "
                    "stages, only against other writers", exc)
        return None
    if version.split(".")[0] != DVC_RWLOCK_MAJOR or parameters != DVC_RWLOCK_PARAMETERS:
        log.warning("dvc %s: dvc.rwlock.rwlock%s is not the rwlock%s of DVC %s.x this code was "
                    "written against: raw data writes are not held against DVC stages, only "
                    "against other writers (see tests/test_private_apis.py)", version,
                    parameters, DVC_RWLOCK_PARAMETERS, DVC_RWLOCK_MAJOR)
        return None
    return rwlock, LockError, localfs


@contextlib.contextmanager
def _dvc_rwlock(raw_dir: Path, timeout_s: float, write: bool):
    """DVC's own read/write lock on ``data/raw``, taken as a writer (or a reader).

    DVC holds a read entry on a stage's dependencies for the whole stage (hashing before, the
    command, hashing after), and ``dvc add data`` a write entry. Taking a write entry here makes
    a raw write wait for any DVC command reading the store, and any DVC command refuse to start
    ("busy") while a write is in progress, so ``dvc.lock`` always records the data a stage read.
    No-op outside a DVC repository.
    """
    root = Path(raw_dir).resolve().parent.parent
    api = dvc_rwlock_api() if (root / ".dvc").is_dir() else None
    if api is None:
        yield
        return
    rwlock, lock_error, localfs = api

    tmp_dir = ensure_dir(root / ".dvc" / "tmp")
    deadline = time.monotonic() + timeout_s
    what = "writing" if write else "reading"
    cmd = f"aq-forecast: {what} {Path(raw_dir).resolve()} (pid {os.getpid()})"
    paths = [str(Path(raw_dir).resolve())]
    delay = 0.1
    while True:
        try:
            lock = rwlock(tmp_dir=str(tmp_dir), fs=localfs, cmd=cmd,
                          read=[] if write else paths, write=paths if write else [],
                          hardlink=False)
            lock.__enter__()
            break
        except lock_error as exc:
            if time.monotonic() > deadline:
                raise PipelineError(
                    f"raw data {raw_dir} still in use by DVC after {timeout_s:g} s: "
                    f"{str(exc).splitlines()[0:3]}"
                ) from None
            time.sleep(delay)
            delay = min(2.0, delay * 1.5)
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


_raw_write_lock_held = False  # by this process, or by the parent it writes for


@contextlib.contextmanager
def raw_write_lock(raw_dir: Path, timeout_s: float = RAW_LOCK_TIMEOUT_S):
    """Exclusive access to the raw store for one read-merge-write (two ingest runs at once).

    DVC's lock first (see :func:`_dvc_write_lock`), then the file lock readers outside DVC
    share; always in this order, so a writer never holds one while waiting for the other held
    by a DVC stage. Re-entrant: a process already holding it (or a worker process writing for
    the parent that holds it, :func:`write_for_lock_holder`) goes straight on.
    """
    global _raw_write_lock_held
    if _raw_write_lock_held:
        yield
        return
    with _dvc_write_lock(raw_dir, timeout_s), file_lock(
        raw_lock_path(raw_dir), shared=False, timeout_s=timeout_s, what="raw-data lock"
    ):
        _raw_write_lock_held = True
        try:
            yield
        finally:
            _raw_write_lock_held = False


def write_for_lock_holder() -> None:
    """Mark this (worker) process as writing for its parent, which holds the raw-data lock for
    the worker's whole life: the workers of one ingestion write disjoint partitions at once."""
    global _raw_write_lock_held
    _raw_write_lock_held = True


@contextlib.contextmanager
def raw_read_lock(raw_dir: Path, timeout_s: float = RAW_LOCK_TIMEOUT_S):
    """A consistent view of the raw store: no partition changes while it is held."""
    with file_lock(raw_lock_path(raw_dir), shared=True, timeout_s=timeout_s,
                   what="raw-data lock"):
        yield


def write_raw(raw_dir: Path, source: str, frame: pd.DataFrame) -> WriteReport:
    """Merge canonical, validated rows into monthly partitions; idempotent.

    Writing the same rows twice leaves byte-identical files; an empty frame
    writes nothing.
    """
    if frame.empty:
        return WriteReport()
    with raw_write_lock(raw_dir):
        return _write_raw_locked(raw_dir, source, frame)


def _write_raw_locked(raw_dir: Path, source: str, frame: pd.DataFrame) -> WriteReport:
    report = WriteReport()
    writes = []
    frame = conform(frame).drop_duplicates(subset=list(KEYS), keep="last")
    for (location_id, month), part in frame.groupby([frame["location_id"],
                                                     month_keys(frame["time"])], sort=True):
        path = partition_path(raw_dir, source, str(location_id), str(month))
        existing = None  # a new partition
        if path.exists():
            try:
                existing = read_partition(path)
            except DamagedPartitionError as exc:
                kept = _set_aside(path)
                log.warning("%s; moved it to %s and storing the new rows in a fresh partition: "
                            "re-ingest month %s of %s to restore the rest", exc, kept, month,
                            location_id)
        writes.append((path, _merge(existing, part), count_new(existing, part, KEYS), len(part)))
        if len(writes) >= WRITE_BATCH:
            _store_partitions(writes, report)
            writes = []
    _store_partitions(writes, report)
    return report


def count_new(existing: pd.DataFrame | None, incoming: pd.DataFrame,
              keys: Sequence[str]) -> int:
    """How many of ``incoming``'s keys ``existing`` does not have (vectorised: a Python loop
    over Timestamps cost a third of a synthetic ingest)."""
    if existing is None or existing.empty:
        return len(incoming)
    known = pd.MultiIndex.from_frame(existing[list(keys)])
    return int((~pd.MultiIndex.from_frame(incoming[list(keys)]).isin(known)).sum())


WRITE_THREADS = 8  # partition writes in flight at once: their fsyncs wait on the disk together
WRITE_BATCH = 64  # merged partitions held before they are written (memory stays bounded)


def _store_partition(path: Path, merged: pd.DataFrame) -> bool:
    """Write a merged partition unless its bytes are already stored; True if written."""
    payload = parquet_bytes(merged)
    if path.exists() and path.read_bytes() == payload:
        return False
    atomic_write_bytes(path, payload)
    return True


def _store_partitions(writes: list[tuple[Path, pd.DataFrame, int, int]],
                      report: WriteReport) -> None:
    """Store (path, merged rows, new rows, incoming rows) partitions and count what changed.

    Each file is written atomically and fsynced before its rename, as one at a time; a few
    threads let the fsyncs (milliseconds each on a busy disk, ~24,000 partitions in a 500 x 2
    ingest) wait together instead of one after the other.
    """
    if len(writes) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(WRITE_THREADS, len(writes))) as pool:
            written = list(pool.map(lambda w: _store_partition(w[0], w[1]), writes))
    else:
        written = [_store_partition(path, merged) for path, merged, _, _ in writes]
    for (path, _, rows_new, rows_in), changed in zip(writes, written, strict=True):
        if not changed:
            report.unchanged.append(path)
            continue
        report.written.append(path)
        report.rows_new += rows_new
        report.rows_updated += rows_in - rows_new


def read_partition(path: Path) -> pd.DataFrame:
    try:
        return conform(pd.read_parquet(path))
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DamagedPartitionError(_damaged_message(path, exc)) from None


def _damaged_message(path: Path, exc: BaseException) -> str:
    month = Path(path).stem.removeprefix("month=")
    location = Path(path).parent.name.removeprefix("location=")
    try:
        start = pd.Timestamp(f"{month}-01", tz="UTC")
        window = f"--start {start:%Y-%m-%d} --end {start + pd.offsets.MonthBegin(1):%Y-%m-%d}"
    except ValueError:
        window = "--start ... --end ..."
    return (f"raw partition {path} is damaged ({type(exc).__name__}: {str(exc)[:200]}); "
            f"rebuild it with `python -m pipeline backfill {window} --locations {location}` "
            "(the damaged file is set aside on the next write)")


def _set_aside(path: Path) -> Path:
    """Move a damaged partition out of the store (kept for inspection, never read again)."""
    root = Path(path).resolve().parents[3]  # data/raw/source=S/location=L/month=M.parquet
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S")
    relative = Path(path).resolve().relative_to(root / "raw")
    target = root / "quarantine" / "damaged" / relative.parent / f"{relative.stem}.{stamp}.parquet"
    ensure_dir(target.parent)
    os.replace(path, target)
    return target


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


def _partition_times(path: Path) -> pd.DatetimeIndex:
    try:
        times = pq.read_table(path, columns=["time"]).column("time").to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise DamagedPartitionError(_damaged_message(path, exc)) from None
    return pd.DatetimeIndex(times).tz_convert("UTC")


def newest_observation(raw_dir: Path, source: str, location_id: str) -> pd.Timestamp | None:
    """Newest stored hour for a location, read from its latest non-empty partition."""
    for path in reversed(raw_files(raw_dir, source, [location_id])):
        times = _partition_times(path)
        if len(times):
            return pd.Timestamp(times.max())
    return None


def stored_times(raw_dir: Path, source: str, location_id: str, start: pd.Timestamp,
                 end: pd.Timestamp) -> pd.DatetimeIndex:
    """Stored hours of a location in ``[start, end)``, read from the partitions that hold them."""
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    lo, hi = start.strftime("%Y-%m"), end.strftime("%Y-%m")
    found = []
    for path in raw_files(raw_dir, source, [location_id]):
        month = path.stem.removeprefix("month=")
        if lo <= month <= hi:
            times = _partition_times(path)
            found.append(times[(times >= start) & (times < end)])
    if not found:
        return pd.DatetimeIndex([], tz="UTC")
    return found[0].append(found[1:]) if len(found) > 1 else found[0]


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
    tables = []
    with raw_read_lock(raw_dir):
        for f in files:
            try:
                tables.append(pq.read_table(f))
            except (OSError, pa.ArrowException) as exc:
                raise DamagedPartitionError(_damaged_message(f, exc)) from None
    # partitions written before a covariate was mapped lack its column: null there
    frame = conform(pa.concat_tables(tables, promote_options="default").to_pandas())
    if start is not None:
        frame = frame[frame["time"] >= pd.Timestamp(start)]
    if end is not None:
        frame = frame[frame["time"] < pd.Timestamp(end)]
    return frame.sort_values(list(KEYS)).reset_index(drop=True)


# ---------------------------------------------------------------- weather forecasts
#
# Raw partitions of their own beside the observations, under the same lock and DVC dependency:
# data/raw/forecasts/source=<kind>/location=<id>/issued=YYYY-MM.parquet, one file per location
# and month of issue time, rows keyed by (location_id, issue_time, time).

FORECASTS_DIR = "forecasts"


def forecast_partition_path(raw_dir: Path, source: str, location_id: str, month: str) -> Path:
    return (Path(raw_dir) / FORECASTS_DIR / f"source={source}" / f"location={location_id}"
            / f"issued={month}.parquet")


def forecast_files(raw_dir: Path, source: str,
                   locations: Iterable[str] | None = None) -> list[Path]:
    base = Path(raw_dir) / FORECASTS_DIR / f"source={source}"
    if not base.exists():
        return []
    wanted = None if locations is None else {f"location={loc}" for loc in locations}
    files = []
    for loc_dir in sorted(base.iterdir()):
        if loc_dir.is_dir() and (wanted is None or loc_dir.name in wanted):
            files.extend(sorted(loc_dir.glob("issued=*.parquet")))
    return files


def _merge_forecasts(existing: pd.DataFrame | None, incoming: pd.DataFrame) -> pd.DataFrame:
    """Like :func:`_merge`: incoming values win where present, a NaN never erases one."""
    if existing is None:
        return incoming.sort_values(list(FORECAST_KEYS)).reset_index(drop=True)
    if existing.empty:
        merged = incoming
    else:
        merged = incoming.set_index(list(FORECAST_KEYS)).combine_first(
            existing.set_index(list(FORECAST_KEYS))).reset_index()
    merged = merged.drop_duplicates(subset=list(FORECAST_KEYS), keep="last")
    return conform_forecasts(merged[list(FORECAST_COLUMNS)]).sort_values(
        list(FORECAST_KEYS)).reset_index(drop=True)


def write_forecasts(raw_dir: Path, source: str, frame: pd.DataFrame) -> WriteReport:
    """Merge validated forecast rows into their partitions; idempotent like :func:`write_raw`."""
    if frame.empty:
        return WriteReport()
    report = WriteReport()
    writes = []
    frame = conform_forecasts(frame).drop_duplicates(subset=list(FORECAST_KEYS), keep="last")
    with raw_write_lock(raw_dir):
        for (location_id, month), part in frame.groupby(
                [frame["location_id"], month_keys(frame["issue_time"])], sort=True):
            path = forecast_partition_path(raw_dir, source, str(location_id), str(month))
            existing = None  # a new partition
            if path.exists():
                try:
                    existing = conform_forecasts(pd.read_parquet(path))
                except (OSError, ValueError, pa.ArrowException) as exc:
                    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S")
                    relative = path.resolve().relative_to(Path(raw_dir).resolve())
                    kept = (Path(raw_dir).resolve().parent / "quarantine" / "damaged"
                            / relative.parent / f"{relative.stem}.{stamp}.parquet")
                    ensure_dir(kept.parent)
                    os.replace(path, kept)
                    log.warning("forecast partition %s is damaged (%s); moved to %s and storing "
                                "the new rows in a fresh one", path, exc, kept)
            writes.append((path, _merge_forecasts(existing, part),
                           count_new(existing, part, FORECAST_KEYS), len(part)))
            if len(writes) >= WRITE_BATCH:
                _store_partitions(writes, report)
                writes = []
        _store_partitions(writes, report)
    return report


def read_forecasts(raw_dir: Path, source: str, locations: Iterable[str] | None = None,
                   start: pd.Timestamp | None = None,
                   end: pd.Timestamp | None = None) -> pd.DataFrame:
    """Stored forecasts of a source issued in ``[start, end)`` (all when None)."""
    files = forecast_files(raw_dir, source, locations)
    if start is not None or end is not None:
        lo = None if start is None else pd.Timestamp(start).strftime("%Y-%m")
        hi = None if end is None else pd.Timestamp(end).strftime("%Y-%m")
        files = [f for f in files
                 if (lo is None or f.stem[len("issued="):] >= lo)
                 and (hi is None or f.stem[len("issued="):] <= hi)]
    if not files:
        return empty_forecasts()
    tables = []
    with raw_read_lock(raw_dir):
        for f in files:
            try:
                tables.append(pq.read_table(f))
            except (OSError, pa.ArrowException) as exc:
                raise DamagedPartitionError(
                    f"forecast partition {f} is damaged ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); delete it and ingest its month again") from None
    frame = conform_forecasts(pa.concat_tables(tables).to_pandas())
    if start is not None:
        frame = frame[frame["issue_time"] >= pd.Timestamp(start)]
    if end is not None:
        frame = frame[frame["issue_time"] < pd.Timestamp(end)]
    return frame.sort_values(list(FORECAST_KEYS)).reset_index(drop=True)


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
    "DamagedPartitionError",
    "StateFileError",
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
    "raw_read_lock",
    "raw_write_lock",
    "read_state_json",
    "stored_times",
    "read_partition",
    "read_raw",
    "write_raw",
    "forecast_files",
    "read_forecasts",
    "write_forecasts",
]
