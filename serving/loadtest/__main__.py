"""``python -m serving.loadtest``: a bounded headless Locust run against the serving app.

It targets the front door users call (``AQ_SERVING_PORT``: nginx before gunicorn, as `make run`
starts them), runs ``locustfile.py`` (loopback only, at most ``AQ_SERVING_CONN_PER_CLIENT``
users: one address gets no more requests at once), reads Locust's CSV summary, applies the SLO gate
(p99 within ``AQ_SERVING_SLO_LATENCY_S``, failures at most ``AQ_SERVING_SLO_ERROR_RATIO``),
pushes the result to the Pushgateway (``AQ_PUSHGATEWAY_URL``, else the local stack's when it
runs; job ``aq_loadtest``, step ``loadtest``, so Prometheus keeps it), prints it, and exits 1
when the gate fails.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.settings import ServingSettings, Settings

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
JOB = "aq_loadtest"


@dataclass(frozen=True)
class Result:
    requests: int
    failures: int
    requests_per_second: float
    p50_s: float
    p99_s: float
    error_ratio: float
    passed: bool
    reasons: tuple[str, ...]


def read_summary(stats_csv: Path) -> dict[str, str]:
    with open(stats_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == "Aggregated":
                return row
    raise ValueError(f"{stats_csv}: no Aggregated row")


def gate(row: dict[str, str], settings: ServingSettings) -> Result:
    requests, failures = int(row["Request Count"]), int(row["Failure Count"])
    p99 = float(row["99%"]) / 1000 if row["99%"] not in ("", "N/A") else float("inf")
    p50 = float(row["50%"]) / 1000 if row["50%"] not in ("", "N/A") else float("inf")
    ratio = failures / requests if requests else 1.0
    reasons = []
    if requests == 0:
        reasons.append("no request completed")
    if p99 > settings.slo_latency_s:
        reasons.append(f"p99 {p99 * 1000:.0f} ms > SLO {settings.slo_latency_s * 1000:.0f} ms")
    if ratio > settings.slo_error_ratio:
        reasons.append(f"error ratio {ratio:.4f} > SLO {settings.slo_error_ratio}")
    return Result(requests, failures, float(row["Requests/s"]), p50, p99, ratio, not reasons,
                  tuple(reasons))


def push(result: Result, pushgateway_url: str, timeout: float) -> None:
    from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

    registry = CollectorRegistry()
    values = {
        "aq_loadtest_requests": ("Requests the last load test sent.", result.requests),
        "aq_loadtest_failures": ("Failed requests (5xx, errors, unexpected status).",
                                 result.failures),
        "aq_loadtest_requests_per_second": ("Throughput of the last load test.",
                                            result.requests_per_second),
        "aq_loadtest_error_ratio": ("Failures / requests of the last load test.",
                                    result.error_ratio),
        "aq_loadtest_slo_passed": ("1 if the last load test passed the SLO gate.",
                                   int(result.passed)),
        "aq_loadtest_last_run_timestamp_seconds": ("Unix time the last load test ended.",
                                                   time.time()),
    }
    for name, (help_text, value) in values.items():
        Gauge(name, help_text, registry=registry).set(value)
    latency = Gauge("aq_loadtest_latency_seconds", "Latency quantiles of the last load test.",
                    ["quantile"], registry=registry)
    latency.labels(quantile="0.5").set(result.p50_s)
    latency.labels(quantile="0.99").set(result.p99_s)
    # the pipeline's grouping key (job, step): one group, replaced by the next run
    pushadd_to_gateway(pushgateway_url, job=JOB, grouping_key={"step": "loadtest"},
                       registry=registry, timeout=timeout)


def default_url() -> str:
    """The local serving app: ``AQ_SERVING_PORT`` (``make loadtest`` sources ``.stack/env``,
    which ``make run`` writes with the running stack's ports)."""
    from pipeline.settings import Ports

    return Ports.from_env().url("serving")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="serving base URL (default: the local one)")
    parser.add_argument("--users", type=int, default=8, help="concurrent users (default 8)")
    parser.add_argument("--run-time", type=int, default=30, help="seconds (default 30)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    args = parser.parse_args(argv)
    url = args.url or default_url()
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"error: the load test targets loopback only, not {host}", file=sys.stderr)
        return 2
    settings, env_settings = ServingSettings.from_env(), Settings.from_env()
    # every user is one connection from 127.0.0.1: nginx serves at most conn_per_client of them
    # at once (the rest would get 429), so more users would measure the limit, not the API
    most = min(64, settings.conn_per_client)
    if not 1 <= args.users <= most or not 1 <= args.run_time <= 3600:
        print(f"error: --users 1..{most} (at most AQ_SERVING_CONN_PER_CLIENT requests at once "
              "from one address) and --run-time 1..3600 seconds", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="aq-loadtest-") as tmp:
        prefix = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
               "--only-summary", "--host", url, "--users", str(args.users),
               "--spawn-rate", str(args.users), "--run-time", f"{args.run_time}s",
               "--stop-timeout", "5", "--csv", str(prefix), "--exit-code-on-error", "0",
               "--loglevel", "WARNING"]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=args.run_time + 120, check=False)
        if proc.returncode != 0 or not Path(f"{prefix}_stats.csv").exists():
            print(f"error: locust failed ({proc.returncode}):\n{proc.stderr[-3000:]}",
                  file=sys.stderr)
            return 2
        result = gate(read_summary(Path(f"{prefix}_stats.csv")), settings)
    print(f"load test of {url}: {args.users} users, {args.run_time} s")
    print(f"  requests {result.requests}, failures {result.failures} "
          f"(ratio {result.error_ratio:.4f}), {result.requests_per_second:.0f} req/s, "
          f"p50 {result.p50_s * 1000:.0f} ms, p99 {result.p99_s * 1000:.0f} ms")
    pushgateway = env_settings.pushgateway_url  # .stack/env sets it while the stack runs
    if pushgateway:
        try:
            push(result, pushgateway, env_settings.push_timeout_s)
            print(f"  pushed to {pushgateway} (job {JOB})")
        except OSError as exc:
            print(f"  warning: push to the Pushgateway failed: {exc}", file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(asdict(result), indent=2))
    if result.passed:
        print(f"  SLO gate passed (p99 <= {settings.slo_latency_s * 1000:.0f} ms, "
              f"error ratio <= {settings.slo_error_ratio})")
        return 0
    print("  SLO gate FAILED: " + "; ".join(result.reasons))
    return 1


if __name__ == "__main__":
    sys.exit(main())
