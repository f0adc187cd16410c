"""The synthetic source's own CPU: ``fetch`` + ``fetch_forecasts`` of N locations x M months.

What ingestion asks of the offline default for each chunk, without validation or writes:
best of ``--repeat`` runs of CPU time (``time.process_time``). To compare two versions, run
it against each checkout in turn (``git worktree add /tmp/before <commit>``), alternating:

    .venv/bin/python bench/bench_synthetic.py                         # this checkout
    .venv/bin/python bench/bench_synthetic.py --checkout /tmp/before  # another one
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the project checkout whose pipeline/ is measured")
    parser.add_argument("--locations", type=int, default=50)
    parser.add_argument("--months", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.checkout.resolve()))
    import pandas as pd

    from pipeline.config import Location, SyntheticSource
    from pipeline.io.sources.synthetic import SyntheticSource as Source

    locations = [Location(id=f"site_{i:03d}", name=f"site {i}", latitude=20 + i * 0.5,
                          longitude=-100 + i * 3.7, timezone="UTC")
                 for i in range(args.locations)]
    source = Source(SyntheticSource(seed=42))
    runs = []
    for _ in range(args.repeat):
        began = time.process_time()
        for month in range(args.months):
            start = pd.Timestamp("2025-01-01", tz="UTC") + pd.DateOffset(months=month)
            end = start + pd.DateOffset(months=1)
            source.fetch(locations, start, end)
            source.fetch_forecasts(locations, start, end)
        runs.append(time.process_time() - began)
    print(f"{args.checkout}: fetch + fetch_forecasts of {args.locations} locations x "
          f"{args.months} months: best of {args.repeat} {min(runs):.2f} CPU s "
          f"(runs {', '.join(f'{r:.2f}' for r in runs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
