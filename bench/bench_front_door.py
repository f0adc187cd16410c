"""Front-door levers, paired: two copies of the serving stack up at once, driven in turns.

A lever of the front door (gunicorn's worker class, an nginx setting, a lighter app) moves the
server CPU per request by a few percent; on a shared 2-core machine two runs minutes apart
differ by more than that. This script starts two front doors as ``make run`` does
(``stack/serving_local.py``: nginx, gunicorn on a unix socket, mtail), each on its own copy of
``--project``, configured by a JSON object of environment variables (``AQ_SERVING_*``; the
key ``GUNICORN_ARGS`` adds command-line options to gunicorn's, which win over its config
file; ``"APP": "noop"`` serves :func:`noop` instead of the API: what the front door costs
alone), and drives ``POST /v1/forecasts`` with observations on A then B (then B then A) in
short slices with ``bench_serving.py``'s load driver, so both see the same load. Per side: the
CPU per request of gunicorn, nginx and mtail (/proc), req/s, p99, and in how many slice pairs
B cost less than A.

    .venv/bin/python bench/bench_front_door.py --project P '{}' '{"APP": "noop"}'
    .venv/bin/python bench/bench_front_door.py --project P \\
        '{}' '{"GUNICORN_ARGS": "--worker-class gthread --threads 1"}'
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serving as bs  # noqa: E402  (this folder: the load driver and the front door)

PARTS = {"gunicorn": "serving", "nginx": "serving_proxy", "mtail": "serving_proxy_metrics"}
NOOP_BODY = json.dumps({"location_id": "x", "forecasts": [
    {"target": "pm2_5", "horizon": h, "value": 12.345678, "lower": 1.2, "upper": 30.1,
     "aqi": 55, "category": "Moderate"} for h in (1, 6, 12, 24)] * 3}).encode()


def noop(environ, start_response):
    """A WSGI app that reads the body and answers a forecast-sized JSON: gunicorn, nginx and
    mtail per request without the API."""
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(NOOP_BODY)))])
    return [NOOP_BODY]


def start(project: Path, spec: dict[str, str]) -> bs.FrontDoor:
    from stack import serving_local

    spec = dict(spec)
    extra = spec.pop("GUNICORN_ARGS", "").split()
    app = spec.pop("APP", "api")
    original = serving_local.command

    def command(paths):
        cmd = original(paths)
        if app == "noop":
            cmd = [*cmd[:-1], "--pythonpath", str(Path(__file__).parent), "bench_front_door:noop"]
        return [cmd[0], *extra, *cmd[1:]]

    serving_local.command = command
    saved = dict(os.environ)
    os.environ.update(spec)
    try:
        return bs.FrontDoor(project, {"OMP_NUM_THREADS": "1", "AQ_PROJECT_DIR": str(project),
                                      "AQ_SERVING_WORKERS": "2"})
    finally:
        os.environ.clear()
        os.environ.update(saved)
        serving_local.command = original


def copy_project(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".stack"))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="side A: JSON object of environment variables")
    parser.add_argument("b", help="side B: JSON object of environment variables")
    parser.add_argument("--project", type=Path, required=True,
                        help="a project with a champion (bench_serving.py builds one)")
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--slice-seconds", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args(argv)
    specs = [json.loads(args.a), json.loads(args.b)]
    work = Path(tempfile.mkdtemp(prefix="bench_front_door_"))
    doors: list[bs.FrontDoor] = []
    try:
        for side, spec in zip("ab", specs, strict=True):
            doors.append(start(copy_project(args.project, work / side), spec))
        location = yaml.safe_load((args.project / "params.yaml").read_text())["locations"][0]["id"]
        newest = "2025-01-01T00:00:00+00:00"  # the no-op app takes any body
        for door, spec in zip(doors, specs, strict=True):
            if spec.get("APP", "api") == "api":  # the stored newest hour: the rebuilt row
                url = f"http://127.0.0.1:{door.port}/v1/forecasts/{location}"
                with urllib.request.urlopen(url, timeout=30) as reply:  # noqa: S310 (loopback)
                    newest = json.load(reply)["issue_time"]
        body = json.dumps({"location_id": location, "observations": [{
            "time": newest, "pm2_5": 23.4, "pm10": 31.0, "no2": 28.0, "o3": 40.0, "co": 300.0,
            "temperature_2m": 4.2, "relative_humidity_2m": 77.0, "wind_speed_10m": 3.1,
            "wind_direction_10m": 240.0, "surface_pressure": 1009.0, "precipitation": 0.0,
            "cloud_cover": 60.0}]}).encode()
        pids = [{part: door._group(name) for part, name in PARTS.items()} for door in doors]
        for door in doors:
            bs.drive(door, "POST", "/v1/forecasts", body, args.connections, 1.0)  # warm-up
        cpu = [dict.fromkeys(PARTS, 0.0) for _ in doors]
        done, seconds = [0, 0], [0.0, 0.0]
        per_slice: list[list[float]] = [[], []]
        p99: list[list[float]] = [[], []]
        print(f"load average {bs.load_average()}", flush=True)
        for i in range(args.slices):
            for j in (0, 1) if i % 2 == 0 else (1, 0):
                before = {part: bs.cpu_seconds(p) for part, p in pids[j].items()}
                result = bs.drive(doors[j], "POST", "/v1/forecasts", body, args.connections,
                                  args.slice_seconds)
                used = {part: bs.cpu_seconds(p) - before[part] for part, p in pids[j].items()}
                for part, value in used.items():
                    cpu[j][part] += value
                done[j] += result["requests"]
                seconds[j] += result["seconds"]
                per_slice[j].append(sum(used.values()) / max(result["requests"], 1) * 1000)
                p99[j].append(result["p99_ms"])
        for j, side in enumerate("AB"):
            parts = {part: round(value / max(done[j], 1) * 1000, 3)
                     for part, value in cpu[j].items()}
            print(f"{side} {json.dumps(specs[j])}: {done[j] / seconds[j]:.1f} req/s, CPU ms per "
                  f"request {parts}, total {sum(parts.values()):.3f} (median of slices "
                  f"{statistics.median(per_slice[j]):.3f}), p99 median of slices "
                  f"{statistics.median(p99[j]):.1f} ms")
        cheaper = sum(b < a for a, b in zip(per_slice[0], per_slice[1], strict=True))
        print(f"B cost less CPU per request than A in {cheaper} of {args.slices} slices; load "
              f"average {bs.load_average()}")
    finally:
        for door in doors:
            door.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
