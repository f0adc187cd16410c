"""Backfill of a whole real export through the CSV source: wall time, peak memory, progress.

Runs ``python -m pipeline backfill`` (the real command, in a child process) on a throwaway
project whose params.yaml is an example config of ``examples/realdata/`` verbatim, with the
data file taken from ``$AQ_CSV_DIR`` (default ``../shared/datasets`` beside the checkout).
Reports the wall time, the child's peak RSS (``getrusage(RUSAGE_CHILDREN)``), the time of
every chunk from its progress line, rows stored and quarantined, and the load average.

    .venv/bin/python bench/bench_csv_backfill.py                      # Detroit/Windsor, 1.7 M rows
    .venv/bin/python bench/bench_csv_backfill.py --example beijing
    .venv/bin/python bench/bench_csv_backfill.py --chunk-days 92      # smaller windows
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.settings import Settings  # noqa: E402

CHUNK = re.compile(r"^(\S+ \S+) INFO pipeline\.ingestion: backfill csv: chunk (\d+)/(\d+) "
                   r".*: (\d+) rows valid, (\d+) quarantined")
START = re.compile(r"^(\S+ \S+) INFO pipeline\.ingestion: backfill csv: .* in chunks of")
SUMMARY = re.compile(r"(\d+) rows valid, (\d+) quarantined, (\d+) file\(s\) written")


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def run(example: str, data_dir: Path, chunk_days: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_csv_") as tmp:
        root = Path(tmp)
        shutil.copy(REPO / "examples" / "realdata" / example / "params.yaml", root)
        env = {**os.environ, "AQ_PROJECT_DIR": str(root), "AQ_CSV_DIR": str(data_dir),
               "PYTHONPATH": str(REPO)}
        env.pop("AQ_PUSHGATEWAY_URL", None)
        command = [sys.executable, "-m", "pipeline", "backfill"]
        if chunk_days:
            command += ["--chunk-days", str(chunk_days)]
        load_before = os.getloadavg()
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                              timeout=3600, check=False)
        wall = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode:
            raise SystemExit(f"backfill failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        lines = proc.stderr.splitlines()
        chunks = [m for m in map(CHUNK.match, lines) if m]
        first = next(m for m in map(START.match, lines) if m)
        stamps = [dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                  for m in (first, *chunks)]
        summary = SUMMARY.search(proc.stderr)
        return {"example": example, "command": " ".join(["python -m pipeline backfill",
                                                         *command[4:]]),
                "wall_s": wall, "peak_rss_mb": peak_mb, "chunks": len(chunks),
                "chunk_s": [round((b - a).total_seconds(), 1) for a, b in
                            zip(stamps, stamps[1:], strict=False)],
                "rows_valid": int(summary.group(1)), "quarantined": int(summary.group(2)),
                "files": int(summary.group(3)), "load_before": load_before,
                "load_after": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="detroit", choices=["detroit", "beijing"])
    parser.add_argument("--chunk-days", type=int)
    parser.add_argument("--data-dir", type=Path,
                        default=Path(Settings.from_env().csv_dir
                                     or REPO.parent / "shared" / "datasets"))
    args = parser.parse_args()
    result = run(args.example, args.data_dir, args.chunk_days)
    print(f"machine: {machine()}")
    print(f"load average before {result['load_before']}, after {result['load_after']}")
    print(f"`{result['command']}` ({args.example}): {result['wall_s']:.1f} s wall, peak RSS "
          f"{result['peak_rss_mb']:.0f} MB, {result['chunks']} chunks, "
          f"{result['rows_valid']:,} rows stored, {result['quarantined']:,} readings "
          f"quarantined, {result['files']} partitions written")
    print(f"seconds between chunk progress lines: {result['chunk_s']}")


if __name__ == "__main__":
    main()
