"""Ingestion benchmark: N locations x D days through the real ingest step, from a local replay
server.

Measures wall time, requests made (counted by the server) and rows stored for
each configuration, so the effect of several locations per request and of the
rate limit is visible. Loopback only; nothing leaves the machine.

    .venv/bin/python bench/bench_ingest.py                 # 50 locations x 30 days
    .venv/bin/python bench/bench_ingest.py --locations 10 --days 7 --latency-ms 50
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from pipeline.context import Context  # noqa: E402
from pipeline.io.storage import read_raw  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.steps import ingest  # noqa: E402
from tests.conftest import make_project  # noqa: E402
from tests.replay_server import (  # noqa: E402
    ReplayServer,
    Reply,
    open_meteo_handler,
    owm_handler,
)

AQ, FORECAST, ARCHIVE = "/v1/air-quality", "/v1/forecast", "/v1/archive"
PREVIOUS = "/previous-runs/v1/forecast"
OWM = "/data/2.5/air_pollution"
KEY = "bench-key"


def with_latency(handler, latency_s: float):
    """A handler that answers like a server ``latency_s`` away."""
    if latency_s <= 0:
        return handler

    def slow(seen) -> Reply:
        reply = handler(seen)
        reply.delay_s = latency_s
        return reply

    return slow


def locations(n: int) -> list[dict]:
    """n distinct places on a coarse grid over Europe and Asia."""
    out = []
    for i in range(n):
        lat = round(35.0 + (i % 10) * 2.5, 4)
        lon = round(-5.0 + (i // 10) * 9.0, 4)
        out.append({"id": f"loc_{i:03d}", "name": f"Place {i}", "latitude": lat,
                    "longitude": lon})
    return out


def run_case(name: str, kind: str, n_locations: int, days: int, latency_s: float,
             source_overrides: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp, ReplayServer() as server:
        for path in (AQ, FORECAST, ARCHIVE, PREVIOUS):
            server.route(path, with_latency(open_meteo_handler(), latency_s))
        for path in (OWM, f"{OWM}/history", f"{OWM}/forecast"):
            server.route(path, with_latency(owm_handler(KEY), latency_s))
        end = pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=10)
        start = end - pd.Timedelta(days=days)
        root = make_project(Path(tmp) / "project", {
            "locations": locations(n_locations),
            "source": {"kind": kind, "start": f"{start:%Y-%m-%d}", "end": f"{end:%Y-%m-%d}",
                       **source_overrides},
        })
        settings = Settings(
            open_meteo_air_quality_url=server.url(AQ),
            open_meteo_forecast_url=server.url(FORECAST),
            open_meteo_archive_url=server.url(ARCHIVE),
            open_meteo_previous_runs_url=server.url(PREVIOUS),
            openweathermap_url=server.url(OWM),
            openweathermap_api_key=SecretStr(KEY),
            http_timeout_s=30.0,
        )
        ctx = Context.load(root, settings=settings)
        started = time.perf_counter()
        report = ingest.run(ctx)
        wall = time.perf_counter() - started
        stored = read_raw(ctx.paths.raw_dir, kind)
        return {
            "case": name,
            "source": kind,
            "locations": n_locations,
            "days": days,
            "latency_ms": round(latency_s * 1000),
            "wall_s": round(wall, 2),
            "requests": len(server.requests),
            "requests_by_provider": dict(report.stats.requests),
            "http_s": round(sum(sum(v) for v in report.stats.latency_s.values()), 2),
            "rows_stored": len(stored),
            "rows_per_s": round(len(stored) / wall),
            "failures": len(report.quality.failures),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--locations", type=int, default=50)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="simulated server latency per request")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--skip-owm", action="store_true",
                        help="skip the OpenWeatherMap cases (1 request per location)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    latency = args.latency_ms / 1000
    fast = {"requests_per_second": 100}
    cases = [
        ("open_meteo, defaults (10 loc/request, 5 req/s)", "open_meteo", {}),
        ("open_meteo, 10 loc/request, no rate limit", "open_meteo", {"open_meteo": fast}),
        ("open_meteo, 1 loc/request, no rate limit", "open_meteo",
         {"open_meteo": {**fast, "locations_per_request": 1}}),
    ]
    if not args.skip_owm:
        cases += [
            ("openweathermap, defaults (1 req/s)", "openweathermap", {}),
            ("openweathermap, no rate limit", "openweathermap",
             {"openweathermap": fast, "open_meteo": fast}),
        ]
    results = [run_case(name, kind, args.locations, args.days, latency, overrides)
               for name, kind, overrides in cases]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{args.locations} locations x {args.days} days, simulated latency "
          f"{args.latency_ms:g} ms per request")
    print()
    print("| case | wall time (s) | time in requests (s) | requests | rows stored | rows/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['case']} | {r['wall_s']} | {r['http_s']} | {r['requests']} | "
              f"{r['rows_stored']} | {r['rows_per_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
