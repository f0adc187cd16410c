"""Raw storage: atomic writes, idempotent merges, nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io import storage
from pipeline.io.storage import (
    ParquetParts,
    atomic_write_bytes,
    read_locations,
    read_raw,
    write_raw,
)


def rows(start: str, hours: int, loc: str = "a", pm: float | None = None) -> pd.DataFrame:
    times = pd.date_range(start, periods=hours, freq="h", tz="UTC")
    values = np.arange(hours, dtype=float) if pm is None else np.full(hours, pm)
    return pd.DataFrame({"location_id": loc, "time": times, "pm2_5": values,
                         "temperature_2m": 10.0})


def snapshot(root) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_ingesting_the_same_interval_twice_gives_the_same_files(tmp_path):
    raw_dir = tmp_path / "data" / "raw"
    first = write_raw(raw_dir, "s", rows("2025-01-30", 72))
    before = snapshot(raw_dir)
    second = write_raw(raw_dir, "s", rows("2025-01-30", 72))
    assert snapshot(raw_dir) == before
    assert len(first.written) == 2  # January and February partitions
    assert second.written == []
    assert len(second.unchanged) == 2
    assert sorted(str(p.relative_to(raw_dir)) for p in first.written) == [
        "source=s/location=a/month=2025-01.parquet",
        "source=s/location=a/month=2025-02.parquet",
    ]


def test_overlapping_windows_merge_without_duplicates(tmp_path):
    raw_dir = tmp_path / "raw"
    write_raw(raw_dir, "s", rows("2025-01-01", 48))
    report = write_raw(raw_dir, "s", rows("2025-01-02", 48))  # 24 h overlap
    stored = read_raw(raw_dir, "s")
    assert len(stored) == 72
    assert not stored.duplicated(["location_id", "time"]).any()
    assert report.rows_new == 24
    assert report.rows_updated == 24


def test_missing_values_never_erase_stored_ones(tmp_path):
    raw_dir = tmp_path / "raw"
    write_raw(raw_dir, "s", rows("2025-01-01", 24, pm=7.0))
    gap = rows("2025-01-01", 24)
    gap["pm2_5"] = np.nan
    gap["temperature_2m"] = 11.0
    write_raw(raw_dir, "s", gap)
    stored = read_raw(raw_dir, "s")
    assert (stored["pm2_5"] == 7.0).all()
    assert (stored["temperature_2m"] == 11.0).all()  # present new values do update


def test_empty_frame_writes_nothing(tmp_path):
    report = write_raw(tmp_path / "raw", "s", rows("2025-01-01", 0))
    assert report.files == []
    assert not (tmp_path / "raw").exists()


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old contents")

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(storage.os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind


@pytest.mark.process
def test_killed_writer_leaves_previous_file_intact(tmp_path):
    """A process killed in the middle of writing a large file leaves the old one readable."""
    raw_dir = tmp_path / "raw"
    write_raw(raw_dir, "s", rows("2025-01-01", 24, pm=1.0))
    path = next(raw_dir.rglob("*.parquet"))
    before = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import os, signal
        from pipeline.io import storage
        real_write = os.fdopen
        class Slow:
            def __init__(self, f): self.f = f
            def __enter__(self): return self
            def __exit__(self, *a): return False
            def write(self, data):
                self.f.write(data[: len(data) // 2]); self.f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        storage.os.fdopen = lambda fd, mode: Slow(real_write(fd, mode))
        storage.atomic_write_bytes({str(path)!r}, b"x" * 10_000_000)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), timeout=60)
    assert proc.returncode == -9
    assert path.read_bytes() == before
    assert read_raw(raw_dir, "s")["pm2_5"].tolist() == [1.0] * 24


def test_read_raw_filters_window_and_locations(tmp_path):
    raw_dir = tmp_path / "raw"
    write_raw(raw_dir, "s", pd.concat([rows("2025-01-01", 24 * 40), rows("2025-01-01", 24, "b")]))
    part = read_raw(raw_dir, "s", locations=["a"], start=pd.Timestamp("2025-02-01", tz="UTC"),
                    end=pd.Timestamp("2025-02-02", tz="UTC"))
    assert len(part) == 24
    assert set(part["location_id"]) == {"a"}


# ------------------------------------------------------------------ consistency and damage

WRITER = textwrap.dedent("""
    import sys
    import numpy as np, pandas as pd
    from pipeline.io.storage import write_raw
    raw_dir, generations = sys.argv[1], int(sys.argv[2])
    times = pd.date_range("2025-01-01", "2026-01-01", freq="h", inclusive="left", tz="UTC")
    for g in range(2, generations + 2):
        frame = pd.DataFrame({"location_id": "a", "time": times, "pm2_5": float(g)})
        write_raw(raw_dir, "s", frame)  # twelve monthly partitions, one generation at a time
    print("done", flush=True)
""")


@pytest.mark.process
def test_readers_never_see_a_half_written_store(tmp_path):
    """A writer replaces twelve partitions per generation; every read sees one generation."""
    raw_dir = tmp_path / "data" / "raw"
    times = pd.date_range("2025-01-01", "2026-01-01", freq="h", inclusive="left", tz="UTC")
    write_raw(raw_dir, "s", pd.DataFrame({"location_id": "a", "time": times, "pm2_5": 1.0}))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(raw_dir), "12"],
                              stdout=subprocess.PIPE, text=True)
    seen = []
    try:
        while writer.poll() is None and len(seen) < 400:
            generations = set(read_raw(raw_dir, "s")["pm2_5"].unique())
            assert len(generations) == 1, f"a read mixed generations {sorted(generations)}"
            seen.append(generations.pop())
    finally:
        out, _ = writer.communicate(timeout=120)
    assert "done" in out
    assert len(set(seen)) > 1  # the reads really overlapped the writes


def test_a_damaged_partition_is_named_and_rebuilt_by_reingesting(tmp_path, caplog):
    raw_dir = tmp_path / "data" / "raw"
    write_raw(raw_dir, "s", rows("2025-01-30", 72, pm=5.0))
    damaged = raw_dir / "source=s" / "location=a" / "month=2025-01.parquet"
    truncated = damaged.read_bytes()[:100]
    damaged.write_bytes(truncated)  # what a failing disk or a copy cut short leaves

    with pytest.raises(storage.DamagedPartitionError) as caught:
        read_raw(raw_dir, "s")
    message = str(caught.value)
    assert str(damaged) in message
    assert "python -m pipeline backfill --start 2025-01-01 --end 2025-02-01 --locations a" \
        in message

    # re-ingesting the window sets the damaged file aside and stores the rows again
    write_raw(raw_dir, "s", rows("2025-01-30", 72, pm=5.0))
    assert "moved it to" in caplog.text
    restored = read_raw(raw_dir, "s")
    assert len(restored) == 72
    kept = list((tmp_path / "data" / "quarantine" / "damaged").rglob("*.parquet"))
    assert len(kept) == 1
    assert kept[0].read_bytes() == truncated  # kept for inspection, out of the store


def test_outputs_are_readable_by_others_and_secrets_are_not(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "out" / "latest.parquet", b"x")
        atomic_write_bytes(tmp_path / "secret", b"y", mode=storage.SECRET_MODE)
        storage.ensure_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "latest.parquet").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


def _forecast_run(issue: str, hours: int, temperature: float) -> pd.DataFrame:
    issued = pd.Timestamp(issue, tz="UTC")
    return pd.DataFrame({
        "location_id": "berlin",
        "issue_time": issued,
        "time": pd.date_range(issued, periods=hours, freq="h"),
        "temperature_2m": temperature,
    })


def test_forecast_writes_count_new_and_updated_rows(tmp_path):
    """rows_new / rows_updated of stored forecast runs (keys: location, issue time, hour)."""
    first = storage.write_forecasts(tmp_path, "synthetic", _forecast_run("2025-01-01", 48, 1.0))
    assert (first.rows_new, first.rows_updated) == (48, 0)
    again = pd.concat([_forecast_run("2025-01-01", 48, 2.0),  # the same run, values revised
                       _forecast_run("2025-01-01T06:00", 48, 3.0)])  # a new run
    second = storage.write_forecasts(tmp_path, "synthetic", again)
    assert (second.rows_new, second.rows_updated) == (48, 48)
    stored = storage.read_forecasts(tmp_path, "synthetic")
    assert len(stored) == 96
    assert set(stored.loc[stored["issue_time"] == pd.Timestamp("2025-01-01", tz="UTC"),
                          "temperature_2m"]) == {2.0}


def test_a_new_partition_has_the_bytes_a_merge_into_an_old_one_gives(tmp_path):
    """A partition written fresh (no merge) and one merged from an earlier write: one content,
    one byte sequence, whatever order and duplicates the rows came in."""
    rng = np.random.default_rng(3)
    rows_all = rows("2025-01-01", 96)
    rows_all["cov_traffic"] = np.arange(96, dtype=float)
    shuffled = rows_all.iloc[rng.permutation(96)]
    shuffled = pd.concat([shuffled, shuffled.iloc[:5]])  # repeated rows: the last one counts
    fresh = write_raw(tmp_path / "fresh", "s", shuffled)
    write_raw(tmp_path / "merged", "s", rows_all.iloc[:40])
    merged = write_raw(tmp_path / "merged", "s", shuffled)
    assert snapshot(tmp_path / "fresh") == snapshot(tmp_path / "merged")
    assert (fresh.rows_new, fresh.rows_updated) == (96, 0)
    assert (merged.rows_new, merged.rows_updated) == (56, 40)

    runs = pd.concat([_forecast_run("2025-01-01", 48, 1.0), _forecast_run("2025-01-01T06:00",
                                                                           48, 2.0)])
    runs = runs.iloc[rng.permutation(len(runs))]
    storage.write_forecasts(tmp_path / "f_fresh", "s", runs)
    storage.write_forecasts(tmp_path / "f_merged", "s", runs.iloc[:30])
    storage.write_forecasts(tmp_path / "f_merged", "s", runs)
    assert snapshot(tmp_path / "f_fresh") == snapshot(tmp_path / "f_merged")


def scored_rows(locations: list[str], hours: int = 30) -> pd.DataFrame:
    grid = pd.MultiIndex.from_product(
        [locations, pd.date_range("2025-01-01", periods=hours, freq="h", tz="UTC")],
        names=["location_id", "issue_time"]).to_frame(index=False)
    return grid.assign(value=np.arange(len(grid), dtype=float))


def test_parquet_parts_write_one_file_a_part_at_a_time_or_nothing(tmp_path):
    path = tmp_path / "history.parquet"
    first = scored_rows(["a", "b", "c"])
    with ParquetParts(path) as parts:
        for location in ("a", "b", "c"):
            parts.write(first[first["location_id"] == location])
    pd.testing.assert_frame_equal(pd.read_parquet(path), first)
    assert pq.ParquetFile(path).num_row_groups == 3

    def failing_run() -> None:
        with ParquetParts(path) as parts:
            parts.write(scored_rows(["z"]))
            raise RuntimeError("a batch failed")

    with pytest.raises(RuntimeError):
        failing_run()
    pd.testing.assert_frame_equal(pd.read_parquet(path), first)  # the earlier file stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.parquet"]  # no temporary


@pytest.mark.parametrize("row_groups", ["one per location", "one"])
def test_read_locations_reads_the_rows_of_some_locations_or_of_the_others(tmp_path, row_groups):
    path = tmp_path / "history.parquet"
    frame = scored_rows(["a", "b", "c", "d"])
    if row_groups == "one":
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    else:
        with ParquetParts(path) as parts:
            for _, part in frame.groupby("location_id"):
                parts.write(part)
    for wanted in (["b"], ["a", "d"], ["x"]):
        expected = frame[frame["location_id"].isin(wanted)].reset_index(drop=True)
        pd.testing.assert_frame_equal(read_locations(path, wanted), expected)
        others = frame[~frame["location_id"].isin(wanted)].reset_index(drop=True)
        pd.testing.assert_frame_equal(read_locations(path, wanted, others=True), others)
    assert read_locations(path, ["a", "b", "c", "d"], others=True).empty
